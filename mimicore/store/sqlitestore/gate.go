package sqlitestore

import (
	"context"
	"database/sql/driver"
	"fmt"
)

// The reader pool's connections are gated (see durable.go): the rows of a
// query wait, after SQLite has read the first of them and so taken the
// query's snapshot, until every commit begun by then is synced. A commit
// is counted as begun before its COMMIT starts, so the snapshot holds no
// commit that the wait does not cover. Everything the reader pool serves
// (queue fetches, group states, outbox rows to send) is thereby durable
// before anyone sees it.

// gatedConnector opens the reader pool's connections through base.
type gatedConnector struct {
	base driver.Connector
	dur  *durability
}

func (c gatedConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	// The driver's connections implement these: a gated connection
	// implements them by passing them on.
	for _, ok := range []bool{
		is[driver.ConnPrepareContext](conn), is[driver.ConnBeginTx](conn), is[driver.QueryerContext](conn),
		is[driver.ExecerContext](conn), is[driver.Pinger](conn), is[driver.SessionResetter](conn),
		is[driver.Validator](conn),
	} {
		if !ok {
			conn.Close()
			return nil, fmt.Errorf("sqlitestore: the SQLite driver's connection %T lacks a method the read gate needs", conn)
		}
	}
	return &gatedConn{Conn: conn, dur: c.dur}, nil
}

func (c gatedConnector) Driver() driver.Driver { return c.base.Driver() }

func is[T any](v any) bool {
	_, ok := v.(T)
	return ok
}

// gatedConn is a reader connection whose rows are gated.
type gatedConn struct {
	driver.Conn
	dur *durability
}

func (c *gatedConn) Prepare(query string) (driver.Stmt, error) {
	st, err := c.Conn.Prepare(query)
	if err != nil {
		return nil, err
	}
	return &gatedStmt{Stmt: st, dur: c.dur}, nil
}

func (c *gatedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return &gatedStmt{Stmt: st, dur: c.dur}, nil
}

func (c *gatedConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

func (c *gatedConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
	if err != nil {
		return nil, err
	}
	return &gatedRows{Rows: rows, dur: c.dur, ctx: ctx}, nil
}

func (c *gatedConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
}

func (c *gatedConn) Ping(ctx context.Context) error { return c.Conn.(driver.Pinger).Ping(ctx) }

func (c *gatedConn) ResetSession(ctx context.Context) error {
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

func (c *gatedConn) IsValid() bool { return c.Conn.(driver.Validator).IsValid() }

// gatedStmt is a prepared statement of a gated connection.
type gatedStmt struct {
	driver.Stmt
	dur *durability
}

func (s *gatedStmt) Query(args []driver.Value) (driver.Rows, error) {
	//lint:ignore SA1019 database/sql calls it only where the driver lacks StmtQueryContext; passed on as is
	rows, err := s.Stmt.Query(args)
	if err != nil {
		return nil, err
	}
	return &gatedRows{Rows: rows, dur: s.dur, ctx: context.Background()}, nil
}

func (s *gatedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := s.Stmt.(driver.StmtQueryContext)
	if !ok {
		return nil, fmt.Errorf("sqlitestore: the SQLite driver's statement %T lacks QueryContext", s.Stmt)
	}
	rows, err := q.QueryContext(ctx, args)
	if err != nil {
		return nil, err
	}
	return &gatedRows{Rows: rows, dur: s.dur, ctx: ctx}, nil
}

func (s *gatedStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	e, ok := s.Stmt.(driver.StmtExecContext)
	if !ok {
		return nil, fmt.Errorf("sqlitestore: the SQLite driver's statement %T lacks ExecContext", s.Stmt)
	}
	return e.ExecContext(ctx, args)
}

// gatedRows waits at its first row (or its end, for an empty result), at
// most until the query's ctx ends.
type gatedRows struct {
	driver.Rows
	dur   *durability
	ctx   context.Context
	gated bool
}

func (r *gatedRows) Next(dest []driver.Value) error {
	err := r.Rows.Next(dest)
	if !r.gated {
		r.gated = true
		if werr := r.dur.wait(r.ctx); werr != nil {
			return werr
		}
	}
	return err
}
