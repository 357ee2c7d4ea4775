package pgstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Wake-ups across Stores: every write that stores messages for queues
// sends, in its transaction, a NOTIFY on queueChannel naming them, which
// PostgreSQL delivers to the listeners when (and only if) the transaction
// commits. Each Store keeps one connection that LISTENs on the channel
// and turns what it hears into Notify calls of its store.Notifier.
const (
	// queueChannel is the NOTIFY channel of queue wake-ups.
	queueChannel = "mimi_queues"
	// hubChannel is the NOTIFY channel of deleted hub records: a payload
	// is the group id in hex (ForgetGroupHub, WatchHubForgets).
	hubChannel = "mimi_hubs"
	// maxPayload is the most bytes of one NOTIFY payload: PostgreSQL
	// refuses 8000 and more.
	maxPayload = 7999
	// listenBackoffMin and listenBackoffMax bound the wait between two
	// attempts to connect the listener.
	listenBackoffMin = 50 * time.Millisecond
	listenBackoffMax = 5 * time.Second
	// postLookupTimeout bounds the membership read that a group post heard
	// from another Store costs (notifyPost).
	postLookupTimeout = 10 * time.Second
)

// The listener's checks of an idle connection: a connection whose peer
// is gone without a word (a half-open TCP connection: a crashed host, a
// NAT or firewall that forgot it) carries no notification and no error
// until the kernel gives up, minutes later. Variables, for the tests.
var (
	// listenIdle is how long the listener waits for a notification
	// before it pings its connection.
	listenIdle = 30 * time.Second
	// listenPingTimeout bounds the answer to that ping; without it in
	// time, the listener connects again.
	listenPingTimeout = 10 * time.Second
)

// notifySQL sends each of the payloads $2 on the channel $1.
const notifySQL = `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`

// wakeEvent is one line of a NOTIFY payload: a message with sequence
// number S in client Q's queue, or post S of group G (seen by its members
// other than X), or, with All, a wake-up of every waiter.
type wakeEvent struct {
	Q   string `json:"q,omitempty"`
	G   []byte `json:"g,omitempty"`
	X   string `json:"x,omitempty"`
	S   uint64 `json:"s,omitempty"`
	All bool   `json:"all,omitempty"`
}

// wakeEvents lists the events of a Fanout's committed writes, f and d as
// notifyDelivered takes them.
func wakeEvents(f store.Fanout, d store.Delivered) []wakeEvent {
	var evs []wakeEvent
	if f.Group != nil && d.Group != 0 {
		evs = append(evs, wakeEvent{G: f.Group.GroupID, X: f.Group.Except, S: d.Group})
		// The members the post removes see it but are no longer
		// current members, whom the other Stores look up.
		for _, c := range f.Group.Leave {
			if c != f.Group.Except {
				evs = append(evs, wakeEvent{Q: c, S: d.Group})
			}
		}
	}
	for i, l := range f.Local {
		if i < len(d.Local) {
			evs = appendedEvents(evs, l.Recipients, d.Local[i])
		}
	}
	return evs
}

// appendedEvents appends to evs an event for each queue that took a
// message, recipients and out as notifyAppended takes them.
func appendedEvents(evs []wakeEvent, recipients []string, out []store.Appended) []wakeEvent {
	for i, r := range recipients {
		if out[i].Seq != 0 {
			evs = append(evs, wakeEvent{Q: r, S: out[i].Seq})
		}
	}
	return evs
}

// payloads encodes evs as NOTIFY payloads of at most maxPayload bytes, one
// JSON object per line. An event too large for a payload of its own (none
// within the store's size bounds) becomes a wake-up of every waiter.
func payloads(evs []wakeEvent) []string {
	var out []string
	var buf bytes.Buffer
	for _, ev := range evs {
		line, err := json.Marshal(ev)
		if err != nil || len(line) > maxPayload {
			line = []byte(`{"all":true}`)
		}
		if buf.Len() > 0 && buf.Len()+1+len(line) > maxPayload {
			out = append(out, buf.String())
			buf.Reset()
		}
		if buf.Len() > 0 {
			buf.WriteByte('\n')
		}
		buf.Write(line)
	}
	if buf.Len() > 0 {
		out = append(out, buf.String())
	}
	return out
}

// notifyTx sends evs on queueChannel inside tx: the other Stores hear of
// them when tx commits, never if it rolls back. No events cost nothing.
func notifyTx(ctx context.Context, tx pgx.Tx, evs []wakeEvent) error {
	if len(evs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, notifySQL, queueChannel, payloads(evs)); err != nil {
		return fmt.Errorf("notifying waiters: %w", err)
	}
	return nil
}

// listener is a Store's LISTEN connection and the goroutine that reads it.
type listener struct {
	cfg *pgx.ConnConfig
	// idle and pingTimeout are listenIdle and listenPingTimeout when the
	// listener started.
	idle, pingTimeout time.Duration
	cancel            context.CancelFunc
	done              chan struct{}
	// pid is the backend process id of the current connection, 0 while
	// disconnected (tests terminate it).
	mu  sync.Mutex
	pid uint32
	// ours holds the backend process ids of the pool's connections: their
	// notifications were signalled in this process already.
	ours sync.Map // uint32 → struct{}
}

// listenConnect opens a connection on cfg and LISTENs on queueChannel
// and hubChannel.
func listenConnect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("connecting the listener: %w", err)
	}
	for _, channel := range []string{queueChannel, hubChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("listening on %s: %w", channel, err)
		}
	}
	return conn, nil
}

// startListening connects the listener (so that a Store that Open returns
// already hears the others) and starts the goroutine that reads it.
func (s *Store) startListening(ctx context.Context) error {
	conn, err := listenConnect(ctx, s.listen.cfg)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(context.Background())
	s.listen.idle, s.listen.pingTimeout = listenIdle, listenPingTimeout
	s.listen.cancel = cancel
	s.listen.done = make(chan struct{})
	go s.listenLoop(lctx, conn)
	return nil
}

// stopListening stops the listener's goroutine and waits for it.
func (s *Store) stopListening() {
	if s.listen.cancel == nil {
		return
	}
	s.listen.cancel()
	<-s.listen.done
}

// listenPID is the backend process id of the listener's connection, 0
// while it is disconnected.
func (s *Store) listenPID() uint32 {
	s.listen.mu.Lock()
	defer s.listen.mu.Unlock()
	return s.listen.pid
}

// listenLoop reads conn's notifications until ctx ends. After each
// listen.idle without one it pings the connection, and takes an answer
// missing after listen.pingTimeout for a failure. When the connection
// fails it connects again, waiting between attempts (from
// listenBackoffMin, doubling up to listenBackoffMax), and once it listens
// again wakes every waiter: a notification may have been missed while
// disconnected, and a waiter woken for nothing fetches again and waits.
func (s *Store) listenLoop(ctx context.Context, conn *pgx.Conn) {
	defer close(s.listen.done)
	backoff := listenBackoffMin
	for {
		s.listen.mu.Lock()
		s.listen.pid = conn.PgConn().PID()
		s.listen.mu.Unlock()
		for {
			wctx, cancel := context.WithTimeout(ctx, s.listen.idle)
			n, err := conn.WaitForNotification(wctx)
			idle := errors.Is(wctx.Err(), context.DeadlineExceeded)
			cancel()
			if err != nil {
				if ctx.Err() == nil && idle && s.listenAlive(ctx, conn) {
					continue
				}
				break
			}
			if _, ours := s.listen.ours.Load(n.PID); !ours {
				if n.Channel == hubChannel {
					s.hubWatch.forgotten(n.Payload)
				} else {
					s.dispatch(ctx, n.Payload)
				}
			}
		}
		s.listen.mu.Lock()
		s.listen.pid = 0
		s.listen.mu.Unlock()
		conn.Close(context.Background())
		for {
			if ctx.Err() != nil {
				return
			}
			var err error
			if conn, err = listenConnect(ctx, s.listen.cfg); err == nil {
				backoff = listenBackoffMin
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, listenBackoffMax)
		}
		s.wakeAll()
		s.hubWatch.call(nil) // a deletion may have been missed
	}
}

// listenAlive reports whether conn answers a ping within
// listen.pingTimeout. A notification that arrives during the ping is kept
// for the next wait (pgx.Conn buffers it).
func (s *Store) listenAlive(ctx context.Context, conn *pgx.Conn) bool {
	pctx, cancel := context.WithTimeout(ctx, s.listen.pingTimeout)
	defer cancel()
	return conn.Ping(pctx) == nil
}

// dispatch signals the waiters named by payload, a notification another
// Store sent (payloads). A payload it cannot read wakes every waiter.
func (s *Store) dispatch(ctx context.Context, payload string) {
	for line := range bytes.SplitSeq([]byte(payload), []byte{'\n'}) {
		var ev wakeEvent
		switch err := json.Unmarshal(line, &ev); {
		case err != nil, ev.All:
			s.wakeAll()
		case ev.G != nil:
			pctx, cancel := context.WithTimeout(ctx, postLookupTimeout)
			s.notifyPost(pctx, ev.G, ev.X, ev.S, nil)
			cancel()
		case ev.Q != "":
			s.notify.Notify(ev.Q, ev.S)
		}
	}
}

// wakeAll wakes every waiter of the Store's Notifier.
func (s *Store) wakeAll() { s.notify.NotifyAll() }

// hubWatchers are the functions of WatchHubForgets.
type hubWatchers struct {
	mu   sync.Mutex // held while they run: stop waits for a running call
	next int
	fns  map[int]func(groupID []byte)
}

// WatchHubForgets implements store.HubForgetWatcher: the deletions of
// the other Stores on the database arrive on hubChannel, and a listener
// that connected again after a failure reports nil.
func (s *Store) WatchHubForgets(f func(groupID []byte)) (stop func()) {
	w := &s.hubWatch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns = map[int]func([]byte){}
	}
	id := w.next
	w.next++
	w.fns[id] = f
	return sync.OnceFunc(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.fns, id)
	})
}

// forgotten reports the group id of payload, a hubChannel notification,
// or nil when it is not one (as if a deletion had been missed).
func (w *hubWatchers) forgotten(payload string) {
	gid, err := hex.DecodeString(payload)
	if err != nil || len(gid) == 0 {
		gid = nil
	}
	w.call(gid)
}

// call calls every function with gid.
func (w *hubWatchers) call(gid []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.fns {
		f(gid)
	}
}
