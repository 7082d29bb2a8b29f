package store

import (
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"time"
)

// Checkpoints (SQLite in WAL mode).
//
// SQLite copies the write-ahead log back into the database file
// (checkpoints) on the connection whose commit made the log pass
// wal_autocheckpoint pages, inside that commit. The writer connection is
// the ledger's committer, the one goroutine every charge waits for, so
// each checkpoint (a thousand pages read from the log and written to the
// database file, and two fsyncs) stalled every request in flight: 6.5 % of
// a node's CPU at 7,800 charges/s went to it on the committer, and each
// one was a latency spike.
//
// So the checkpointer does it on a connection of its own, every
// CheckpointEvery, in PASSIVE mode: it never waits for or blocks the
// writer, and copies what the log holds when it starts. The writer keeps
// a backstop (writerAutoCheckpoint, far above what the checkpointer leaves
// behind) so that the log still restarts from its beginning, which only a
// checkpoint that has copied every frame allows, should the checkpointer
// fall behind.
const (
	CheckpointEvery      = 100 * time.Millisecond
	writerAutoCheckpoint = 8000 // pages (32 MiB of log)
)

type checkpointer struct {
	db       *sql.DB
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func startCheckpointer(dsn string) (*checkpointer, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	c := &checkpointer{db: db, stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c, nil
}

func (c *checkpointer) loop() {
	defer close(c.done)
	t := time.NewTicker(CheckpointEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _, err := checkpoint(ctx, c.db)
		cancel()
		// A failed checkpoint loses nothing (the log keeps every frame and
		// the writer's backstop still checkpoints): say so once.
		if err != nil && !failing {
			slog.Warn("store: background checkpoint failed; the writer's own checkpoints continue", "err", err)
		}
		failing = err != nil
	}
}

// checkpoint runs one PASSIVE checkpoint and returns the log's frames and
// how many of them are in the database file now.
func checkpoint(ctx context.Context, db *sql.DB) (frames, copied int, err error) {
	var busy int
	err = db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &frames, &copied)
	return frames, copied, err
}

func (c *checkpointer) close() error {
	if c == nil {
		return nil
	}
	c.stopOnce.Do(func() { close(c.stop) }) // DB.Close may be called twice
	<-c.done
	return c.db.Close()
}
