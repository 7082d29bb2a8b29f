package terminal

// SetBeforeInsert sets the hook CreateTerminal runs between reading the
// provider and storing the terminal (nil: none).
func SetBeforeInsert(f func()) { testHookBeforeInsert = f }
