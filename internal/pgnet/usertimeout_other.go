//go:build !linux

package pgnet

import "syscall"

// setUserTimeout does nothing where TCP_USER_TIMEOUT does not exist: TCP
// keepalives and the statement deadlines still apply.
func setUserTimeout(string, string, syscall.RawConn) error { return nil }
