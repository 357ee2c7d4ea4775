package sqlitestore

import (
	"context"
	"database/sql"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// OutboxBacklog implements store.OutboxBacklog: a read of the heads, with
// a probe of the destination index per destination for its oldest
// message, whatever the backlog.
func (s *Store) OutboxBacklog(ctx context.Context) ([]store.Backlog, error) {
	const doing = "reading outbox backlog"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT h.destination, h.messages, h.bytes, h.dropped_full, h.dropped_reset,
		(SELECT enqueued_ms FROM outbox o WHERE o.destination = h.destination ORDER BY o.id LIMIT 1)
		FROM outbox_heads h WHERE h.messages > 0 OR h.dropped_full > 0 OR h.dropped_reset > 0 ORDER BY h.destination`)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	out := []store.Backlog{}
	for rows.Next() {
		var b store.Backlog
		var oldest sql.NullInt64
		if err := rows.Scan(&b.Destination, &b.Messages, &b.Bytes, &b.Dropped.BacklogFull, &b.Dropped.AdminReset, &oldest); err != nil {
			return nil, s.fail(doing, err)
		}
		if oldest.Valid {
			b.Oldest = check.Time(oldest.Int64)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

var _ store.OutboxBacklog = (*Store)(nil) // interface guard
