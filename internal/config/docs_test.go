package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// The documentation is checked here, next to the loader the quick start
// relies on; nothing in it needs a database.

// readmeMaxLines bounds the README: it is a front page, the rest lives in
// docs/.
const readmeMaxLines = 250

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// docFiles returns README.md and every docs/*.md, relative to repoRoot.
func docFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil || len(files) == 0 {
		t.Fatalf("docs/*.md: %v (%d files)", err, len(files))
	}
	rel := []string{"README.md"}
	for _, f := range files {
		r, err := filepath.Rel(repoRoot, f)
		if err != nil {
			t.Fatal(err)
		}
		rel = append(rel, r)
	}
	return rel
}

func TestReadmeIsShort(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "\n"); n > readmeMaxLines {
		t.Errorf("README.md has %d lines; keep it at most %d and move details to docs/", n, readmeMaxLines)
	}
}

// The README's quick start shows examples/minimal.yaml, which
// TestMinimalExampleLoads loads: the two must not drift apart.
func TestReadmeQuickStartIsMinimalExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(repoRoot, "examples", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```yaml\n"+string(example)+"```\n") {
		t.Errorf("README.md does not show examples/minimal.yaml verbatim in a ```yaml block")
	}
}

// Every relative link of README.md and docs/*.md names a file that exists,
// and every #anchor a heading of the file it points to (GitHub's slugs).
func TestDocLinksResolve(t *testing.T) {
	anchors := map[string]map[string]bool{} // file (relative to repoRoot) -> slugs
	slugsOf := func(file string) (map[string]bool, error) {
		if s, ok := anchors[file]; ok {
			return s, nil
		}
		raw, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			return nil, err
		}
		s := headingSlugs(string(raw))
		anchors[file] = s
		return s, nil
	}
	checked := 0
	for _, file := range docFiles(t) {
		raw, err := os.ReadFile(filepath.Join(repoRoot, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range markdownLinks(string(raw)) {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue
			}
			checked++
			path, frag, _ := strings.Cut(l.target, "#")
			target := file
			if path != "" {
				target = filepath.Clean(filepath.Join(filepath.Dir(file), path))
				if strings.HasPrefix(target, "..") {
					t.Errorf("%s:%d: link %q leaves the repository", file, l.line, l.target)
					continue
				}
				if _, err := os.Stat(filepath.Join(repoRoot, target)); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", file, l.line, l.target, target)
					continue
				}
			}
			if frag == "" {
				continue
			}
			if !strings.HasSuffix(target, ".md") {
				t.Errorf("%s:%d: link %q: an anchor into a file that is not Markdown", file, l.line, l.target)
				continue
			}
			slugs, err := slugsOf(target)
			if err != nil {
				t.Errorf("%s:%d: %v", file, l.line, err)
				continue
			}
			if !slugs[frag] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", file, l.line, l.target, target, frag)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative links found: the link parser is broken")
	}
}

type mdLink struct {
	line   int
	target string
}

var (
	fence       = regexp.MustCompile("^\\s*(```|~~~)")
	inlineCode  = regexp.MustCompile("`+[^`]*`+")
	linkTarget  = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	headingLine = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
)

// markdownLinks returns the inline link targets outside code blocks and
// code spans.
func markdownLinks(md string) []mdLink {
	var out []mdLink
	inFence := false
	for i, line := range strings.Split(md, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		// A code span inside a link's text ([`x`](y)) keeps its "](".
		line = inlineCode.ReplaceAllString(line, "code")
		for _, m := range linkTarget.FindAllStringSubmatch(line, -1) {
			out = append(out, mdLink{line: i + 1, target: m[1]})
		}
	}
	return out
}

// headingSlugs returns the anchors GitHub gives the headings of md:
// lower case, spaces to hyphens, punctuation other than - and _ dropped,
// and -1, -2, ... on repeats.
func headingSlugs(md string) map[string]bool {
	slugs := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(md, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		m := headingLine.FindStringSubmatch(line)
		if inFence || m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			slugs[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			slugs[s] = true
		}
		seen[s]++
	}
	return slugs
}

func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	for _, tc := range []struct{ heading, want string }{
		{"The outbox (`walhook.deliveries`)", "the-outbox-walhookdeliveries"},
		{"walhook and NetBox's own webhooks", "walhook-and-netboxs-own-webhooks"},
		{"1. Move the outbox: `database.outbox_dsn`", "1-move-the-outbox-databaseoutbox_dsn"},
		{"`body_template`: your own body", "body_template-your-own-body"},
		{"Delivery: success, retries, order, TLS", "delivery-success-retries-order-tls"},
	} {
		if got := slug(tc.heading); got != tc.want {
			t.Errorf("slug(%q) = %q, want %q", tc.heading, got, tc.want)
		}
	}
	got := headingSlugs("# A\n```\n# not a heading\n```\n## A\n### A b ##\n")
	for _, want := range []string{"a", "a-1", "a-b"} {
		if !got[want] {
			t.Errorf("headingSlugs: no %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Error("headingSlugs took a line of a code block")
	}
}
