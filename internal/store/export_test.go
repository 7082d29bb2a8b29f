package store

import "context"

// MigrateWith applies ms to db as Open applies the embedded migrations.
func MigrateWith(ctx context.Context, db *DB, ms []Migration) error { return db.migrateList(ctx, ms) }
