// Package test holds walhook's end-to-end tests: they build the real binary,
// run it against a throwaway PostgreSQL (package pgtest) and real HTTP
// receivers, and break things on purpose (SIGKILL, PostgreSQL crashes).
package test
