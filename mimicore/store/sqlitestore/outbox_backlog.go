package sqlitestore

import (
	"context"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// OutboxBacklog implements store.OutboxBacklog: one grouped read of the
// outbox's destination index.
func (s *Store) OutboxBacklog(ctx context.Context) ([]store.Backlog, error) {
	const doing = "reading outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT destination, COUNT(*), MIN(enqueued_ms) FROM outbox
		GROUP BY destination ORDER BY destination`)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	out := []store.Backlog{}
	for rows.Next() {
		var b store.Backlog
		var oldest int64
		if err := rows.Scan(&b.Destination, &b.Messages, &oldest); err != nil {
			return nil, s.fail(doing, err)
		}
		b.Oldest = check.Time(oldest)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

var _ store.OutboxBacklog = (*Store)(nil) // interface guard
