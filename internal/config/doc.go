// Package config loads, expands and validates walhook's YAML configuration
// (SPEC §2). Every problem found is reported with its file:line, all at once.
//
// Parse takes a file through these steps, each its own job:
//
//  1. decode the YAML into a node tree (syntax errors carry their line);
//  2. expand ${VAR} and ${VAR:-default} in every scalar;
//  3. walk the tree against the Config struct, recording the line of every
//     setting and reporting unknown keys (with a "did you mean" hint),
//     repeated keys and values of the wrong type, each replaced by its zero
//     value so that one mistake gives one message;
//  4. decode the tree into a Config and fill in the defaults (the Default*
//     constants; a Config built in code gets them from ApplyDefaults);
//  5. validate one section at a time (database, models, webhooks,
//     dispatch, http, tracing, log), compiling what capture and dispatch
//     use from the webhooks: conditions, rate limits, TLS settings.
//
// A running walhook reloads its file with the same Load; Compare says
// what a new configuration changes and which changes need a restart.
package config
