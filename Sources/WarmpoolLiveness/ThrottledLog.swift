import Logging

/// Log lines that a peer can cause at will (an unauthenticated connection refused, a failed
/// accept): the first few each second are written, the rest counted and summed up in one line
/// when the second is over. Disk use stays bounded under a flood, and the reason is still there.
struct ThrottledLog {
    let linesPerSecond: Int
    private var windowStart: Int64 = .min
    private var written = 0
    private var suppressed = 0

    init(linesPerSecond: Int) {
        self.linesPerSecond = linesPerSecond
    }

    /// Nothing is waiting to be summed up.
    var isQuiet: Bool { suppressed == 0 }

    mutating func note(_ message: @autoclosure () -> String, now: Int64, into logger: Logger) {
        flush(now: now, into: logger)
        if windowStart == .min { windowStart = now }
        guard written < linesPerSecond else {
            suppressed += 1
            return
        }
        written += 1
        logger.warning("\(message())")
    }

    /// Ends the second if it is over, with one line for what was not written.
    mutating func flush(now: Int64, into logger: Logger) {
        guard windowStart != .min, now - windowStart >= 1_000_000_000 else { return }
        if suppressed > 0 {
            logger.warning(
                "\(suppressed) more lines like the above in the last second, not written one by one (unauthenticated peers)")
        }
        windowStart = .min
        written = 0
        suppressed = 0
    }
}
