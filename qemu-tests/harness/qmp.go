package harness

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Event is one asynchronous QMP event, e.g. SHUTDOWN {"reason":
// "guest-shutdown"}, RESET, WATCHDOG {"action": "reset"}.
type Event struct {
	Name string
	Data json.RawMessage
	At   time.Time
}

// qmpConn is a minimal QMP client: one command at a time, events recorded.
type qmpConn struct {
	conn  net.Conn
	cmdMu sync.Mutex // one command in flight
	resp  chan qmpMsg
	once  sync.Once
}

type qmpMsg struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	QMP json.RawMessage `json:"QMP"`
}

// dialQMP connects to QEMU's QMP socket (retrying until QEMU has created
// it), negotiates capabilities and starts delivering events to onEvent.
func dialQMP(sock string, exited <-chan struct{}, onEvent func(Event)) (*qmpConn, error) {
	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("qemu exited before QMP came up: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("connect %s: %w", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	q := &qmpConn{conn: conn, resp: make(chan qmpMsg, 1)}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	// Greeting, then capabilities negotiation, synchronously.
	if !sc.Scan() {
		conn.Close()
		return nil, fmt.Errorf("QMP greeting from %s: %w", sock, errors.Join(sc.Err(), errors.New("connection closed")))
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("QMP capabilities on %s: %w", sock, err)
	}
	for {
		if !sc.Scan() {
			conn.Close()
			return nil, fmt.Errorf("QMP capabilities reply from %s: %w", sock, errors.Join(sc.Err(), errors.New("connection closed")))
		}
		var m qmpMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			conn.Close()
			return nil, fmt.Errorf("QMP reply from %s: %w", sock, err)
		}
		if m.Event != "" {
			onEvent(Event{Name: m.Event, Data: m.Data, At: time.Now()})
			continue
		}
		if m.Error != nil {
			conn.Close()
			return nil, fmt.Errorf("QMP capabilities: %s", m.Error.Desc)
		}
		break
	}
	go func() {
		defer close(q.resp)
		for sc.Scan() {
			var m qmpMsg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				continue
			}
			if m.Event != "" {
				onEvent(Event{Name: m.Event, Data: m.Data, At: time.Now()})
				continue
			}
			q.resp <- m
		}
	}()
	return q, nil
}

func (q *qmpConn) close() { q.once.Do(func() { q.conn.Close() }) }

// command runs one QMP command and returns its "return" value.
func (q *qmpConn) command(name string, args any, timeout time.Duration) (json.RawMessage, error) {
	q.cmdMu.Lock()
	defer q.cmdMu.Unlock()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	// Drop a reply that arrived after an earlier command timed out.
	select {
	case <-q.resp:
	default:
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", name, err)
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", name, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m, ok := <-q.resp:
		if !ok {
			return nil, fmt.Errorf("QMP %s: connection closed", name)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("QMP %s: %s: %s", name, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case <-t.C:
		return nil, fmt.Errorf("QMP %s: no reply within %v", name, timeout)
	}
}

func (vm *VM) addEvent(e Event) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.events = append(vm.events, e)
	if vm.log != nil {
		fmt.Fprintf(vm.log, "\n=== harness: +%v QMP event %s %s\n", e.At.Sub(vm.start).Round(time.Millisecond), e.Name, e.Data)
	}
	vm.notifyLocked()
}

// Events returns the QMP events so far.
func (vm *VM) Events() []Event {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Event(nil), vm.events...)
}

// ExpectEvent waits for the next event named name that no earlier
// ExpectEvent returned (e.g. "RESET" once per guest reboot with
// AllowReboot, "WATCHDOG"). Events of other names are skipped over.
func (vm *VM) ExpectEvent(name string, timeout time.Duration) (Event, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		vm.mu.Lock()
		for i := vm.evSeen; i < len(vm.events); i++ {
			if vm.events[i].Name == name {
				vm.evSeen = i + 1
				e := vm.events[i]
				vm.mu.Unlock()
				return e, nil
			}
		}
		exited, changed := vm.exited, vm.changed
		vm.mu.Unlock()
		if exited {
			return Event{}, fmt.Errorf("qemu exited (%s) without QMP event %s; last output:\n%s", vm.exitDesc(), name, vm.Tail(2048))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return Event{}, fmt.Errorf("no QMP event %s within %v; last output:\n%s", name, timeout, vm.Tail(2048))
		}
	}
}

// ExitReason is the reason of the last SHUTDOWN event ("guest-shutdown"
// for a power-off, "guest-reset" for a reboot, panic=-1 or watchdog reset
// under -no-reboot, "host-signal" ...), or "" if there was none (e.g.
// QEMU was killed).
func (vm *VM) ExitReason() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.exitReasonLocked()
}

func (vm *VM) exitReasonLocked() string {
	for i := len(vm.events) - 1; i >= 0; i-- {
		if vm.events[i].Name == "SHUTDOWN" {
			var d struct {
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(vm.events[i].Data, &d)
			return d.Reason
		}
	}
	return ""
}

// WatchdogFired reports whether the i6300esb watchdog expired.
func (vm *VM) WatchdogFired() bool {
	for _, e := range vm.Events() {
		if e.Name == "WATCHDOG" {
			return true
		}
	}
	return false
}

// QMP runs a QMP command (e.g. "system_reset" for a hard reset without
// the guest syncing, "quit") and returns its result.
func (vm *VM) QMP(command string, args any) (json.RawMessage, error) {
	vm.mu.Lock()
	q := vm.qmp
	vm.mu.Unlock()
	if q == nil {
		return nil, errors.New("qemu: no QMP connection")
	}
	return q.command(command, args, 10*time.Second)
}

// Reset hard-resets the guest (the reset button: no sync, caches lost).
// Without AllowReboot this ends the run.
func (vm *VM) Reset() error {
	_, err := vm.QMP("system_reset", nil)
	return err
}
