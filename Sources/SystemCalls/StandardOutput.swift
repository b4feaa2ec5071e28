import Glibc

/// Flushes buffered standard output (and every other C stream) at once: for lines a parent
/// process waits for (READY, progress). `fflush(nil)` avoids touching the `stdout` global, which
/// Swift 6 treats as shared mutable state.
public func flushOutput() { fflush(nil) }
