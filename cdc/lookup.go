package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/pgnet"
)

// Relations and computed fields are read from the source database when a
// change is rendered, in batches: the changes of a source transaction are
// buffered (up to chunkRows at a time) and each relation or computed field
// of a model costs one query per chunk, whatever the number of rows. The
// queries run in one read-only transaction with a statement timeout; one that
// fails leaves its field out of the chunk's payloads and is logged.

// lookupBegin starts the read-only transaction of a chunk's lookups. JIT is
// off: these are short indexed queries, and compiling a computed field's
// plan (PostgreSQL JITs any plan above jit_above_cost) cost more than running
// it: capture with examples/netbox.yaml ran at about half the speed with it.
var lookupBegin = fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; SET LOCAL jit = off", payload.LookupTimeout.Milliseconds())

// lookupRun executes one chunk's queries in a read-only transaction on the
// source pool.
type lookupRun struct {
	pool interface {
		BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
	}
	tx  pgx.Tx
	log zerolog.Logger
}

// query runs sql with text-format results and calls fn for each row (the
// values are only valid during the call). An error rolls the transaction
// back; the next query starts a new one.
func (lr *lookupRun) query(ctx context.Context, sql string, args []any, fn func(vals [][]byte)) error {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	if lr.tx == nil {
		tx, err := lr.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: lookupBegin})
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		lr.tx = tx
	}
	rows, err := lr.tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err == nil {
		for rows.Next() {
			fn(rows.RawValues())
		}
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		rctx, cancel := pgnet.Bound(context.WithoutCancel(ctx))
		_ = lr.tx.Rollback(rctx)
		cancel()
		lr.tx = nil
		return err
	}
	return nil
}

func (lr *lookupRun) finish(ctx context.Context) {
	if lr.tx != nil {
		ctx, cancel := pgnet.Bound(ctx)
		defer cancel()
		if err := lr.tx.Commit(ctx); err != nil {
			lr.log.Debug().Err(err).Msg("end lookup transaction")
		}
		lr.tx = nil
	}
}

// keySet collects the distinct key tuples of a chunk, as text arrays (one
// per tuple position; nil elements are NULL).
type keySet struct {
	idx  map[string]int
	cols [][]*string
	buf  []byte
}

func newKeySet(width int) *keySet {
	return &keySet{idx: map[string]int{}, cols: make([][]*string, width)}
}

// add returns the index of the tuple of vals at positions cols.
func (ks *keySet) add(vals payload.Row, cols []int) int {
	ks.buf = ks.buf[:0]
	for _, c := range cols {
		v := vals[c]
		if v.Kind == 't' {
			ks.buf = append(ks.buf, 't')
			ks.buf = strconv.AppendInt(ks.buf, int64(len(v.Data)), 10)
			ks.buf = append(ks.buf, ':')
			ks.buf = append(ks.buf, v.Data...)
		} else {
			ks.buf = append(ks.buf, 'n')
		}
	}
	if i, ok := ks.idx[string(ks.buf)]; ok {
		return i
	}
	i := len(ks.idx)
	ks.idx[string(ks.buf)] = i
	for n, c := range cols {
		var p *string
		if vals[c].Kind == 't' {
			s := string(vals[c].Data)
			p = &s
		}
		ks.cols[n] = append(ks.cols[n], p)
	}
	return i
}

func (ks *keySet) len() int { return len(ks.idx) }

func (ks *keySet) args() []any {
	out := make([]any, len(ks.cols))
	for i, c := range ks.cols {
		out[i] = c
	}
	return out
}

// maxLookupWorkers bounds the connections a chunk's lookups use at once.
const maxLookupWorkers = 4

// lookupJob is one query of a chunk's lookups; it writes only its own slot
// of the changes' fields. An error it returns is retried.
type lookupJob func(*lookupRun) error

// lookupRetryFor bounds how long a chunk's failing lookups are retried in
// place (the stream answers no keepalive meanwhile); after that the stream
// ends with the error and Run reconnects with backoff and replays.
var lookupRetryFor = 20 * time.Second

// lookups fills in the unchanged TOAST values, then the relation and
// computed fields of a chunk of pending changes, one query per table (read
// back), relation and computed field of each model in it. The queries run on
// up to maxLookupWorkers connections of the source pool (at most half of
// it), each in its own read-only transaction with a statement timeout.
// A failing query is retried with backoff, holding capture (a warning, and
// Capture.Stall), unless its model says on_lookup_error: omit.
func (s *stream) lookups(ctx context.Context, ps []pending) error {
	// Changes per relation (table version), in order of first appearance.
	var order, fillOrder []*payload.Relation
	groups := map[*payload.Relation][]int{}
	fills := map[*payload.Relation][]int{}
	for i := range ps {
		p := &ps[i]
		if p.fill {
			if _, ok := fills[p.Rel]; !ok {
				fillOrder = append(fillOrder, p.Rel)
			}
			fills[p.Rel] = append(fills[p.Rel], i)
		}
		pl := p.Rel.Plan
		if pl == nil {
			continue
		}
		if _, ok := groups[p.Rel]; !ok {
			order = append(order, p.Rel)
		}
		groups[p.Rel] = append(groups[p.Rel], i)
		p.Extra = make([]payload.LookupVal, len(pl.Rels)+len(pl.Comps))
		if p.oldNeeded() {
			p.oldExtra = make([]payload.LookupVal, len(pl.Rels))
		}
	}
	var fillJobs, jobs []lookupJob
	for _, rel := range fillOrder {
		idxs := fills[rel]
		fillJobs = append(fillJobs, func(lr *lookupRun) error { return s.readBack(ctx, lr, rel, ps, idxs) })
	}
	for _, rel := range order {
		idxs := groups[rel]
		for li, rl := range rel.Plan.Rels {
			jobs = append(jobs, func(lr *lookupRun) error { return s.relationLookup(ctx, lr, rel, li, rl, ps, idxs) })
		}
		snaps := wantsSnapshots(rel)
		for ci, cl := range rel.Plan.Comps {
			if cl.Snap && !snaps {
				continue // no webhook of the model renders snapshots
			}
			slot := len(rel.Plan.Rels) + ci
			jobs = append(jobs, func(lr *lookupRun) error { return s.computedLookup(ctx, lr, rel, slot, cl, ps, idxs) })
		}
	}
	if len(jobs)+len(fillJobs) > 0 {
		if err := s.waitVisible(ctx, s.txnXid); err != nil {
			return err
		}
	}
	// Read-backs first: computed fields may take a filled column.
	if err := s.runLookups(ctx, fillJobs); err != nil {
		return err
	}
	for _, i := range fills {
		for _, j := range i {
			ps[j].fill = false
		}
	}
	if err := s.runLookups(ctx, jobs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err // shutting down: do not store payloads missing fields
	}
	return nil
}

// wantsSnapshots reports whether a webhook of rel's model renders
// snapshots (format netbox-v4).
func wantsSnapshots(rel *payload.Relation) bool {
	for _, set := range [][3]payload.HookSet{rel.Hooks, rel.Coal} {
		for _, hs := range set {
			for _, sp := range hs.Specs {
				if sp != nil && sp.Format == payload.FormatNetboxV4 {
					return true
				}
			}
		}
	}
	return false
}

// runLookups runs jobs, retrying the failing ones with backoff for up to
// lookupRetryFor.
func (s *stream) runLookups(ctx context.Context, jobs []lookupJob) error {
	start := time.Now()
	backoff := 250 * time.Millisecond
	stalled := false
	for {
		errs := s.runJobs(ctx, jobs)
		if err := ctx.Err(); err != nil {
			return err
		}
		var retry []lookupJob
		var first error
		for i, err := range errs {
			if err != nil {
				retry = append(retry, jobs[i])
				if first == nil {
					first = err
				}
			}
		}
		if len(retry) == 0 {
			if stalled {
				s.c.setStall("")
				s.log.Info().Dur("waited_ms", time.Since(start)).Msg("lookups succeed again: capture goes on")
			}
			return nil
		}
		s.c.lookupErrors.Add(int64(len(retry)))
		msg := fmt.Sprintf("lookup failed, capture holds the transaction (commit LSN %s) and retries (set on_lookup_error: omit on the model to send changes without the field instead): %v", s.txnLSN, first)
		s.c.setStall(msg)
		stalled = true
		if time.Since(start) >= lookupRetryFor {
			return fmt.Errorf("lookups of the transaction with commit LSN %s still fail after %s (capture reconnects and retries): %w", s.txnLSN, lookupRetryFor, first)
		}
		ev := s.log.Warn().Err(first).Int("failed_queries", len(retry)).Dur("retry_in_ms", backoff)
		var pe *pgconn.PgError
		if errors.As(first, &pe) && pe.Code == pgerrcode.QueryCanceled {
			ev = ev.Dur("statement_timeout_ms", payload.LookupTimeout)
		}
		ev.Msg("lookup failed: capture holds the changes and retries (set on_lookup_error: omit on the model to send them without the field instead)")
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 4*time.Second)
		jobs = retry
	}
}

// runJobs runs jobs on up to maxLookupWorkers connections and returns their
// errors.
func (s *stream) runJobs(ctx context.Context, jobs []lookupJob) []error {
	errs := make([]error, len(jobs))
	workers := min(len(jobs), maxLookupWorkers, max(1, int(s.c.source.Config().MaxConns)/2))
	if workers <= 1 {
		lr := &lookupRun{pool: s.c.source, log: s.log}
		for i, j := range jobs {
			errs[i] = j(lr)
		}
		lr.finish(ctx)
		return errs
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lr := &lookupRun{pool: s.c.source, log: s.log}
			defer lr.finish(ctx)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(jobs) {
					return
				}
				errs[i] = jobs[i](lr)
			}
		}()
	}
	wg.Wait()
	return errs
}

// readBack replaces the unchanged TOAST values ('u') of the changes idxs of
// ps, all of table version rel, with the values read back by key: one query
// for the chunk. A row that is gone renders those columns as null, with a
// warning.
func (s *stream) readBack(ctx context.Context, lr *lookupRun, rel *payload.Relation, ps []pending, idxs []int) error {
	if rel.KeyTypes == nil {
		types := make([]string, len(rel.PKCols))
		for n, i := range rel.PKCols {
			err := lr.query(ctx, `SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped`,
				[]any{rel.ID, rel.Cols[i].Name}, func(vals [][]byte) { types[n] = string(vals[0]) })
			if err != nil {
				return fmt.Errorf("%s.%s: read key types: %w", rel.Schema, rel.Name, err)
			}
			if types[n] == "" {
				return fmt.Errorf("%s.%s: key column %s not found", rel.Schema, rel.Name, rel.Cols[i].Name)
			}
		}
		rel.KeyTypes = types
	}
	// The columns missing in any of the changes, and the distinct keys.
	var cols []int
	have := map[int]bool{}
	ks := newKeySet(len(rel.PKCols))
	keyOf := make([]int, len(idxs))
	for n, i := range idxs {
		p := &ps[i]
		keyOf[n] = -1
		for c, v := range p.Vals {
			if v.Kind == 'u' && !have[c] {
				have[c] = true
				cols = append(cols, c)
			}
		}
		ok := true
		for _, c := range rel.PKCols {
			ok = ok && p.Vals[c].Kind == 't'
		}
		if !ok {
			s.log.Error().Str("table", rel.Schema+"."+rel.Name).
				Msg("unchanged TOAST value with no key to read it back: those columns render as null (set REPLICA IDENTITY FULL to carry them)")
			continue
		}
		keyOf[n] = ks.add(p.Vals, rel.PKCols)
	}
	results := make([][][]byte, ks.len())
	if ks.len() > 0 {
		var b strings.Builder
		b.WriteString("SELECT k.n")
		for _, c := range cols {
			b.WriteString(", t.")
			b.WriteString(pgx.Identifier{rel.Cols[c].Name}.Sanitize())
		}
		b.WriteString(" FROM ")
		payload.UnnestKeys(&b, len(rel.PKCols), "k", "k")
		b.WriteString(" JOIN ")
		b.WriteString(pgx.Identifier{rel.Schema, rel.Name}.Sanitize())
		b.WriteString(" AS t ON ")
		for n, c := range rel.PKCols {
			if n > 0 {
				b.WriteString(" AND ")
			}
			fmt.Fprintf(&b, "t.%s = k.k%d::%s", pgx.Identifier{rel.Cols[c].Name}.Sanitize(), n+1, rel.KeyTypes[n])
		}
		err := lr.query(ctx, b.String(), ks.args(), func(vals [][]byte) {
			n, err := strconv.Atoi(string(vals[0]))
			if err != nil || n < 1 || n > len(results) || results[n-1] != nil {
				return
			}
			row := make([][]byte, len(cols))
			for i, v := range vals[1:] {
				if v != nil {
					row[i] = slices.Clone(v)
				}
			}
			results[n-1] = row
		})
		if err != nil {
			return fmt.Errorf("%s.%s: read back unchanged TOAST columns: %w", rel.Schema, rel.Name, err)
		}
	}
	gone := 0
	for n, i := range idxs {
		p := &ps[i]
		var got [][]byte
		if keyOf[n] >= 0 {
			got = results[keyOf[n]]
		}
		if got == nil && keyOf[n] >= 0 {
			gone++
		}
		for j, c := range cols {
			if p.Vals[c].Kind != 'u' {
				continue
			}
			if j >= len(got) || got[j] == nil {
				p.Vals[c] = payload.TupleValue{Kind: 'n'}
			} else {
				p.Vals[c] = payload.TupleValue{Kind: 't', Data: got[j]}
			}
		}
	}
	if gone > 0 {
		s.log.Warn().Str("table", rel.Schema+"."+rel.Name).Int("changes", gone).
			Msg("row with unchanged TOAST columns is gone; those columns render as null (set REPLICA IDENTITY FULL to carry them)")
	}
	return nil
}

func (s *stream) relationLookup(ctx context.Context, lr *lookupRun, rel *payload.Relation, slot int, rl *payload.RelLookup, ps []pending, idxs []int) error {
	ks := newKeySet(len(rl.FK))
	type ref struct {
		p   *payload.LookupVal
		key int
	}
	var refs []ref
	collect := func(vals payload.Row, keysOnly bool, dst *payload.LookupVal) {
		for _, c := range rl.FK {
			if keysOnly && !rel.Cols[c].Key {
				return // not rendered
			}
			if vals[c].Kind != 't' {
				*dst = payload.LookupVal{Present: true, JSON: payload.JSONNull}
				return
			}
		}
		refs = append(refs, ref{dst, ks.add(vals, rl.FK)})
	}
	for _, i := range idxs {
		p := &ps[i]
		collect(p.Vals, p.KeysOnly, &p.Extra[slot])
		if p.oldExtra != nil && p.Old != nil {
			collect(p.Old, p.OldType != 'O', &p.oldExtra[slot])
		}
	}
	if ks.len() == 0 {
		return nil
	}
	results := make([][]byte, ks.len())
	err := lr.query(ctx, rl.SQL, ks.args(), func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(results) || results[n-1] != nil {
			return
		}
		results[n-1] = rl.Render(nil, vals[1:], s.rd.Resolve)
	})
	if err != nil {
		if rel.Model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: relation %s: %w", rel.Model.Model, rl.Key, err)
		}
		s.lookupFailed(&rl.LogLimit, rel, "relation", rl.Key, len(refs), err)
		return nil
	}
	s.dels.fillFromImages(ctx, lr, rl, ks, results, s.rd.Resolve)
	for _, r := range refs {
		if j := results[r.key]; j != nil {
			*r.p = payload.LookupVal{Present: true, JSON: j}
		} else {
			*r.p = payload.LookupVal{Present: true, JSON: payload.JSONNull} // row not found
		}
	}
	return nil
}

// maxDeletedImages bounds the deleted rows a transaction keeps for the
// relations of its other changes.
var maxDeletedImages = 10000

// deletedImages keeps the old images (REPLICA IDENTITY FULL) of the rows a
// source transaction deletes from tables that relations point at, so that a
// relation to a row deleted in the same transaction (a cascaded delete:
// interfaces, then their device) renders the row as it was, the way NetBox
// serializes an object before it deletes it, instead of null.
type deletedImages struct {
	lsn     uint64                    // the transaction the images belong to
	targets map[string]bool           // related tables of the configured relations
	rows    map[string][]deletedImage // table -> deleted rows
	n       int
	warned  bool
}

type deletedImage struct {
	rel  *payload.Relation
	vals payload.Row
}

// wants reports whether some relation points at rel's table.
func (d *deletedImages) wants(cfg *config.Config, rel *payload.Relation) bool {
	if d.targets == nil {
		d.targets = map[string]bool{}
		for _, m := range cfg.Models {
			for _, r := range m.Relations {
				d.targets[r.Schema+"."+r.Name] = true
			}
		}
	}
	return d.targets[rel.Schema+"."+rel.Name]
}

// keep records a deleted row of rel, when some relation points at its table
// and the row is complete. lsn identifies the transaction.
func (d *deletedImages) keep(cfg *config.Config, log zerolog.Logger, lsn uint64, rel *payload.Relation, vals payload.Row, keysOnly bool) {
	table := rel.Schema + "." + rel.Name
	if keysOnly || !d.wants(cfg, rel) {
		return
	}
	if d.lsn != lsn {
		clear(d.rows)
		d.lsn, d.n, d.warned = lsn, 0, false
	}
	if d.n >= maxDeletedImages {
		if !d.warned {
			d.warned = true
			log.Warn().Str("table", table).Int("rows", maxDeletedImages).
				Msg("transaction deletes more related rows than are kept: relations to the rest of them render as null")
		}
		return
	}
	if d.rows == nil {
		d.rows = map[string][]deletedImage{}
	}
	d.rows[table] = append(d.rows[table], deletedImage{rel: rel, vals: payload.CopyRow(vals)})
	d.n++
}

// fillFromImages renders the keys of ks that the lookup did not find
// (results[i] == nil) from the deleted rows of the current transaction.
func (d *deletedImages) fillFromImages(ctx context.Context, lr *lookupRun, rl *payload.RelLookup, ks *keySet, results [][]byte, resolve payload.TypeResolver) {
	imgs := d.rows[rl.Table]
	if len(imgs) == 0 || rl.ImageSQL == "" {
		return
	}
	var keyBuf []byte
	keyOf := func(get func(i int) *string) string {
		keyBuf = keyBuf[:0]
		for i := range rl.RefKey {
			if v := get(i); v != nil {
				keyBuf = append(keyBuf, 't')
				keyBuf = strconv.AppendInt(keyBuf, int64(len(*v)), 10)
				keyBuf = append(keyBuf, ':')
				keyBuf = append(keyBuf, *v...)
			} else {
				keyBuf = append(keyBuf, 'n')
			}
		}
		return string(keyBuf)
	}
	// The images by the values of the columns the foreign key refers to.
	byKey := map[string]int{}
	for n, img := range imgs {
		cols := make([]int, len(rl.RefKey))
		ok := true
		for i, k := range rl.RefKey {
			cols[i] = -1
			for j, c := range img.rel.Cols {
				if c.Name == k {
					cols[i] = j
				}
			}
			ok = ok && cols[i] >= 0 && cols[i] < len(img.vals)
		}
		if !ok {
			continue
		}
		byKey[keyOf(func(i int) *string {
			v := img.vals[cols[i]]
			if v.Kind != 't' {
				return nil
			}
			s := string(v.Data)
			return &s
		})] = n
	}
	var args []*string
	var slots []int
	for i := range results {
		if results[i] != nil {
			continue
		}
		n, ok := byKey[keyOf(func(c int) *string { return ks.cols[c][i] })]
		if !ok {
			continue
		}
		j := string(imageJSON(imgs[n].rel, imgs[n].vals))
		args = append(args, &j)
		slots = append(slots, i)
	}
	if len(args) == 0 {
		return
	}
	err := lr.query(ctx, rl.ImageSQL, []any{args}, func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(slots) {
			return
		}
		results[slots[n-1]] = rl.Render(nil, vals[1:], resolve)
	})
	if err != nil {
		lr.log.Warn().Err(err).Str("relation", rl.Key).Msg("relation to rows deleted in the same transaction: cannot render them from their old images; they render as null")
	}
}

// imageJSON is a row as a JSON object of its columns' text values (json and
// jsonb embedded), for json_populate_record.
func imageJSON(rel *payload.Relation, vals payload.Row) []byte {
	b := []byte{'{'}
	for i, c := range rel.Cols {
		if i >= len(vals) || vals[i].Kind == 'u' {
			continue
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = payload.AppendJSONString(b, c.Name)
		b = append(b, ':')
		switch {
		case vals[i].Kind != 't':
			b = append(b, "null"...)
		case c.OID == payload.OIDJSON || c.OID == payload.OIDJSONB:
			b = append(b, vals[i].Data...)
		default:
			b = payload.AppendJSONStringBytes(b, vals[i].Data)
		}
	}
	return append(b, '}')
}

func (s *stream) computedLookup(ctx context.Context, lr *lookupRun, rel *payload.Relation, slot int, cl *payload.CompLookup, ps []pending, idxs []int) error {
	ks := newKeySet(len(cl.Args))
	type ref struct {
		p   *payload.LookupVal
		key int
	}
	var refs []ref
outer:
	for _, i := range idxs {
		p := &ps[i]
		if p.KeysOnly {
			for _, a := range cl.Args {
				if !rel.Cols[a].Key {
					continue outer // an argument the deleted row does not carry
				}
			}
		}
		refs = append(refs, ref{&p.Extra[slot], ks.add(p.Vals, cl.Args)})
	}
	if len(refs) == 0 {
		return nil
	}
	results := make([][]byte, max(ks.len(), 1))
	err := lr.query(ctx, cl.SQL, ks.args(), func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(results) {
			return
		}
		if vals[1] == nil {
			results[n-1] = payload.JSONNull
		} else {
			results[n-1] = append([]byte(nil), vals[1]...)
		}
	})
	if err != nil {
		if rel.Model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: computed field %s: %w", rel.Model.Model, cl.Name, err)
		}
		s.lookupFailed(&cl.LogLimit, rel, "computed field", cl.Name, len(refs), err)
		return nil
	}
	for _, r := range refs {
		k := r.key
		if len(cl.Args) == 0 {
			k = 0
		}
		if j := results[k]; j != nil {
			*r.p = payload.LookupVal{Present: true, JSON: j}
		} else {
			*r.p = payload.LookupVal{Present: true, JSON: payload.JSONNull}
		}
	}
	return nil
}

func (s *stream) lookupFailed(l *payload.LogLimit, rel *payload.Relation, what, name string, changes int, err error) {
	ok, suppressed := l.Allow()
	if !ok {
		return
	}
	ev := s.log.Warn().Err(err).Str("model", rel.Model.Model).Str(what, name).Int("changes", changes)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.QueryCanceled {
		ev = ev.Dur("statement_timeout_ms", payload.LookupTimeout)
	}
	if suppressed > 0 {
		ev = ev.Int("failures_not_logged", suppressed)
	}
	ev.Msg(what + " lookup failed: these changes are sent without the field")
}

// long wait of the stream (for visibility, or retrying lookups) does not
// make the walsender drop the connection (wal_sender_timeout). It confirms
// only what the writer committed: the stream is inside a transaction.
func (s *stream) keepAlive(ctx context.Context) error {
	if s.conn == nil || time.Now().Before(s.nextStatus) {
		return nil
	}
	return s.sendStatus(ctx)
}

// visibleSQL reports whether the transaction with the 32-bit id $1 is
// visible to a new snapshot. The full 64-bit id is rebuilt from the
// snapshot's xmax (the nearest id with those low 32 bits); a transaction
// is visible when below xmin, or below xmax and not in progress. One that
// has committed but is not visible yet (its commit record is flushed, so the
// walsender may send it, while the backend still waits, e.g. for a
// synchronous standby) is at or above xmax when it holds the newest id.
const visibleSQL = `SELECT txid_visible_in_snapshot(greatest(3, x + (($1::bigint - x) % 4294967296 + 6442450944) % 4294967296 - 2147483648), s)
	FROM (SELECT txid_current_snapshot() AS s) q, LATERAL (SELECT txid_snapshot_xmax(q.s) AS x) m`

// visibleWarnAfter is how long waitVisible waits before it says so, and
// then how often it repeats it.
var visibleWarnAfter = 2 * time.Second

// waitVisible waits until transaction xid is visible to new snapshots, so
// that lookups and read-backs see the committed state, not the one before
// it. The walsender can send a transaction as soon as its commit record is
// flushed, a moment (or, with synchronous replication waiting for a standby,
// much longer) before other sessions see it. It never gives up: rendering
// with data that may be stale would be wrong for good, so a long wait holds
// capture, visibly (a warning, and Capture.Stall).
func (s *stream) waitVisible(ctx context.Context, xid uint32) error {
	if xid == 0 || xid == s.visibleXid {
		return nil
	}
	start := time.Now()
	nextWarn := start.Add(visibleWarnAfter)
	pause := 200 * time.Microsecond
	for {
		var visible bool
		qctx, cancel := pgnet.Bound(ctx)
		err := s.c.source.QueryRow(qctx, visibleSQL, int64(xid)).Scan(&visible)
		cancel()
		if err != nil {
			return fmt.Errorf("wait until source transaction %d is visible: %w", xid, err)
		}
		if visible {
			s.visibleXid = xid
			if time.Since(start) >= visibleWarnAfter {
				s.c.setStall("")
				s.log.Info().Uint32("xid", xid).Dur("waited_ms", time.Since(start)).Msg("source transaction is visible: capture goes on")
			}
			return nil
		}
		if now := time.Now(); now.After(nextWarn) {
			msg := fmt.Sprintf("source transaction %d (commit LSN %s) is committed but not yet visible to other sessions (waiting for a synchronous standby? see pg_stat_activity wait_event SyncRep): capture holds its changes until it is, so that lookups do not read stale rows", xid, s.txnLSN)
			s.c.setStall(msg)
			s.log.Warn().Uint32("xid", xid).Dur("waited_ms", now.Sub(start)).Msg(msg)
			nextWarn = now.Add(30 * time.Second)
		}
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 100*time.Millisecond)
	}
}
