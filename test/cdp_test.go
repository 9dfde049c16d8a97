package test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A minimal Chrome DevTools Protocol driver for the browser tests. It talks
// to headless Chromium over --remote-debugging-pipe (NUL-terminated JSON on
// file descriptors 3 and 4), so it needs no websocket library and no port.

// chromiumPath finds Debian's chromium (or $CHROMIUM).
func chromiumPath() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium not found: install Debian's chromium (apt-get install -y chromium; .ci/run does) or set $CHROMIUM")
}

// browser is a running headless Chromium with one page attached.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       io.WriteCloser
	mu      sync.Mutex
	nextID  int
	waiting map[int]chan cdpReply
	session string
	done    chan struct{}
	stderr  *lockedBuffer
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 64<<10 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startBrowser starts headless Chromium and opens a blank page; the test is
// skipped when Chromium is not installed.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin, err := chromiumPath()
	if err != nil {
		t.Skip(err)
	}
	// Chromium reads commands from fd 3 and writes replies to fd 4.
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, w: cmdW, waiting: map[int]chan cdpReply{}, done: make(chan struct{}), stderr: &lockedBuffer{}}
	b.cmd = exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--window-size=1280,900",
		"--remote-debugging-pipe", "about:blank")
	b.cmd.ExtraFiles = []*os.File{cmdR, outW}
	b.cmd.Stdout, b.cmd.Stderr = b.stderr, b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Skipf("cannot start %s: %v", bin, err)
	}
	cmdR.Close()
	outW.Close()
	go b.read(outR)
	t.Cleanup(func() {
		_ = b.callTimeout(2*time.Second, "", "Browser.close", nil, nil)
		cmdW.Close()
		exited := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("chromium output:\n%s", b.stderr.String())
		}
	})

	var created struct {
		TargetID string `json:"targetId"`
	}
	if err := b.callTimeout(20*time.Second, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &created); err != nil {
		t.Fatalf("chromium did not open a page: %v\n%s", err, b.stderr.String())
	}
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.must("", "Target.attachToTarget", map[string]any{"targetId": created.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	b.must(b.session, "Page.enable", nil, nil)
	b.must(b.session, "Runtime.enable", nil, nil)
	return b
}

// read dispatches replies until the pipe closes; events are ignored.
func (b *browser) read(r io.ReadCloser) {
	defer close(b.done)
	defer r.Close()
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m struct {
			ID int `json:"id"`
			cdpReply
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil || m.ID == 0 {
			continue
		}
		b.mu.Lock()
		ch := b.waiting[m.ID]
		delete(b.waiting, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m.cdpReply
		}
	}
}

// callTimeout sends one command and decodes its result into out.
func (b *browser) callTimeout(timeout time.Duration, session, method string, params, out any) error {
	if params == nil {
		params = map[string]any{}
	}
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpReply, 1)
	b.waiting[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := b.w.Write(append(data, 0)); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, r.Error.Message, r.Error.Code)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-b.done:
		return fmt.Errorf("%s: chromium exited", method)
	case <-time.After(timeout):
		return fmt.Errorf("%s: no answer within %s", method, timeout)
	}
}

func (b *browser) must(session, method string, params, out any) {
	b.t.Helper()
	if err := b.callTimeout(10*time.Second, session, method, params, out); err != nil {
		b.t.Fatal(err)
	}
}

// eval evaluates a JavaScript expression in the page and decodes its value.
func (b *browser) eval(expr string, out any) error {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	err := b.callTimeout(10*time.Second, b.session, "Runtime.evaluate",
		map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &res)
	if err != nil {
		return err
	}
	if res.Exception != nil {
		return fmt.Errorf("evaluate %q: %s", expr, res.Exception.Text)
	}
	if out != nil && len(res.Result.Value) > 0 {
		return json.Unmarshal(res.Result.Value, out)
	}
	return nil
}

// waitFor polls a JavaScript condition until it is true; errors while a
// navigation replaces the page count as false.
func (b *browser) waitFor(what string, timeout time.Duration, cond string) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		if err := b.eval("!!("+cond+")", &ok); err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			var html string
			_ = b.eval("document.documentElement ? document.documentElement.outerHTML : ''", &html)
			b.t.Fatalf("browser: timed out after %s waiting for %s; the page:\n%s", timeout, what, html)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// navigate opens url and waits until the page has loaded.
func (b *browser) navigate(url string) {
	b.t.Helper()
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	b.must(b.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		b.t.Fatalf("browser: navigate to %s: %s", url, nav.ErrorText)
	}
	b.waitFor("the page to load", 10*time.Second, `document.readyState === "complete" && location.href !== "about:blank"`)
}

// click clicks the middle of the element selector matches, with the mouse,
// as a person would.
func (b *browser) click(selector string) {
	b.t.Helper()
	sel, _ := json.Marshal(selector)
	var pos *struct{ X, Y float64 }
	err := b.eval(`(() => { const el = document.querySelector(`+string(sel)+`); if (!el) return null;
		el.scrollIntoView({block: "center"}); const r = el.getBoundingClientRect();
		return {X: r.left + r.width / 2, Y: r.top + r.height / 2}; })()`, &pos)
	if err != nil {
		b.t.Fatal(err)
	}
	if pos == nil {
		var html string
		_ = b.eval("document.documentElement.outerHTML", &html)
		b.t.Fatalf("browser: nothing matches %s on the page:\n%s", selector, html)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		b.must(b.session, "Input.dispatchMouseEvent", map[string]any{"type": typ, "x": pos.X, "y": pos.Y,
			"button": "left", "buttons": 1, "clickCount": 1}, nil)
	}
}

// typeText types text into the focused element.
func (b *browser) typeText(text string) {
	b.t.Helper()
	b.must(b.session, "Input.insertText", map[string]any{"text": text}, nil)
}

// text returns the text of the element selector matches ("" if none).
func (b *browser) text(selector string) string {
	b.t.Helper()
	sel, _ := json.Marshal(selector)
	var s string
	if err := b.eval(`(() => { const el = document.querySelector(`+string(sel)+`); return el ? el.textContent.trim() : ""; })()`, &s); err != nil {
		b.t.Fatal(err)
	}
	return s
}

// screenshot saves a PNG of the page into $WALHOOK_SCREENSHOTS, if set.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	dir := os.Getenv("WALHOOK_SCREENSHOTS")
	if dir == "" {
		return
	}
	var shot struct {
		Data string `json:"data"`
	}
	if err := b.callTimeout(10*time.Second, b.session, "Page.captureScreenshot",
		map[string]any{"format": "png", "captureBeyondViewport": true}, &shot); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}
