package payload

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// rewriteParams replaces the parameters $1..$n of sql with repl(n), leaving
// string literals, quoted identifiers, comments and dollar-quoted strings
// alone, and drops trailing semicolons.
func rewriteParams(sql string, repl func(n int) (string, error)) (string, error) {
	sql = strings.TrimRight(strings.TrimSpace(sql), "; \t\r\n")
	var b strings.Builder
	identChar := func(c byte) bool {
		return c == '_' || c == '$' || c >= 0x80 || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
	}
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\'':
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i < 2 || !identChar(sql[i-2]))
			j := closingQuote(sql, i, '\'', escapes)
			if j >= len(sql) {
				return "", errors.New("sql has an unterminated string literal")
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '"':
			j := closingQuote(sql, i, '"', false)
			if j >= len(sql) {
				return "", errors.New("sql has an unterminated quoted identifier")
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			b.WriteString(sql[i : i+j])
			i += j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			depth, j := 1, i+2
			for j < len(sql) && depth > 0 {
				switch {
				case strings.HasPrefix(sql[j:], "/*"):
					depth++
					j += 2
				case strings.HasPrefix(sql[j:], "*/"):
					depth--
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return "", errors.New("sql has an unterminated comment")
			}
			b.WriteString(sql[i:j])
			i = j
		case c == '$' && (i == 0 || !identChar(sql[i-1])):
			j := i + 1
			for j < len(sql) && '0' <= sql[j] && sql[j] <= '9' {
				j++
			}
			if j > i+1 { // $N
				n, err := strconv.Atoi(sql[i+1 : j])
				if err != nil {
					return "", fmt.Errorf("sql has a bad parameter %s", sql[i:j])
				}
				r, err := repl(n)
				if err != nil {
					return "", err
				}
				b.WriteString(r)
				i = j
				continue
			}
			// $tag$ ... $tag$ (the tag may be empty)
			for j < len(sql) && identChar(sql[j]) && sql[j] != '$' {
				j++
			}
			if j < len(sql) && sql[j] == '$' {
				tag := sql[i : j+1]
				end := strings.Index(sql[j+1:], tag)
				if end < 0 {
					return "", errors.New("sql has an unterminated dollar-quoted string")
				}
				stop := j + 1 + end + len(tag)
				b.WriteString(sql[i:stop])
				i = stop
				continue
			}
			b.WriteByte(c)
			i++
		case identChar(c):
			j := i
			for j < len(sql) && identChar(sql[j]) {
				j++
			}
			b.WriteString(sql[i:j])
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// closingQuote returns the index of the quote q that closes the quoted text
// opening at sql[open] (a doubled quote is part of the text; with backslash,
// so is any character after a backslash), or len(sql) when it is unclosed.
func closingQuote(sql string, open int, q byte, backslash bool) int {
	j := open + 1
	for j < len(sql) {
		switch {
		case backslash && sql[j] == '\\':
			j += 2
		case sql[j] == q && j+1 < len(sql) && sql[j+1] == q:
			j += 2
		case sql[j] == q:
			return j
		default:
			j++
		}
	}
	return len(sql)
}
