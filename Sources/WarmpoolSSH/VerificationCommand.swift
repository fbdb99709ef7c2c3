/// The one command the verifier runs on an instance, and the parser for its answer. Pure.
///
/// The script is fixed text. It never contains a single quote, so it travels whole inside one
/// single-quoted word to `/bin/sh -c` (which works whatever the user's login shell is). The
/// volume path, the marker's file name, a per-attempt nonce, the volume id when the marker is to be
/// established (else empty) and, when an epoch is to be written, the epoch and the volume id follow
/// as single-quoted words and reach the script as `$1`-`$6`: it only ever expands them inside
/// double quotes, never evaluates them. Otherwise the expected volume id never leaves this
/// process: the script prints the marker's bytes in hex, and the comparison happens here.
///
/// An epoch is written (`.warmpool/epoch`, a temporary file fsynced then renamed over it) only
/// when the marker holds the expected id, never over a higher epoch, and never through a symlink
/// (the volume belongs to the workload); `epoch_found` and `epoch_written` report what happened.
///
/// Establishing writes the marker only on a mounted path that has none: into a temporary file,
/// fsynced, then hard-linked into place (`ln` never replaces an existing marker, so a marker
/// that appears meanwhile wins and is compared as usual).
///
/// The answer is `key=value` lines between `warmpool-verify-begin=NONCE` and
/// `warmpool-verify-end=NONCE`; anything a login script prints before the begin line is ignored,
/// and a missing end line means the answer was cut short.
public enum VerificationCommand {
    /// Bytes of the marker the script sends at most, plus one to tell "too large" apart.
    public static let markerLimit = 512

    public static let script = """
        p="$1"; m="$2"; n="$3"; w="$4"; q="$5"; k="$6"
        echo "warmpool-verify-begin=$n"
        echo "version=1"
        if [ ! -d "$p" ]; then
          echo "exists=0"
          echo "warmpool-verify-end=$n"
          exit 0
        fi
        echo "exists=1"
        mountpoint -q "$p" 2>/dev/null
        rc=$?
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 32 ]; then
          rc=32
          r=$(cd -P "$p" 2>/dev/null && pwd -P)
          while read -r _ _ _ _ mp _; do
            if [ "$mp" = "$r" ]; then rc=0; break; fi
          done < /proc/self/mountinfo
        fi
        if [ "$rc" -eq 0 ]; then echo "mounted=1"; else echo "mounted=0"; fi
        f="$p/$m"
        if [ "$rc" -eq 0 ] && [ -n "$w" ] && [ ! -e "$f" ] && [ ! -L "$f" ]; then
          t="$p/.warmpool-marker-$n"
          if printf "%s\\n" "$w" | dd of="$t" conv=fsync 2>/dev/null && ln "$t" "$f" 2>/dev/null; then
            echo "marker_written=1"
          else
            echo "marker_written=0"
          fi
          rm -f "$t" 2>/dev/null
        fi
        if [ -f "$f" ] && [ -r "$f" ]; then
          printf "marker_hex="
          od -An -tx1 -v -N \(markerLimit + 1) "$f" | tr -d " \\n"
          echo
        else
          echo "marker=missing"
        fi
        if [ "$rc" -eq 0 ]; then
          t="$p/.warmpool-write-probe-$n"
          if e=$(printf "warmpool write probe\\n" | dd of="$t" conv=fsync 2>&1); then
            if rm -f "$t" && [ ! -e "$t" ]; then
              echo "writable=1"
            else
              echo "writable=0"
              echo "write_error=cannot remove the probe file"
            fi
          else
            rm -f "$t" 2>/dev/null
            echo "writable=0"
            w=$(printf "%s" "$e" | head -n 1)
            printf "write_error=%s\\n" "$(printf "%s" "${w##*: }" | tr -cd "A-Za-z0-9 .:_/-")"
          fi
          df -Pk "$p" 2>/dev/null | awk "NR == 2 { print \\"free_kib=\\" \\$(NF - 2) }"
        fi
        if [ -n "$q" ] && [ "$rc" -eq 0 ] && [ -f "$f" ] && [ "$(tr -d " \\t\\r\\n" < "$f")" = "$k" ]; then
          d="$p/.warmpool"
          [ -L "$d" ] || mkdir -p "$d" 2>/dev/null
          c=$(cat "$d/epoch" 2>/dev/null | tr -cd "0-9" | cut -c1-19)
          echo "epoch_found=${c:-0}"
          if [ -L "$d" ] || [ -L "$d/epoch" ]; then
            echo "epoch_written=0"
          elif [ -n "$c" ] && [ "$c" -gt "$q" ]; then
            echo "epoch_written=0"
          else
            t="$d/.epoch-$n"
            if printf "%s\\n" "$q" | dd of="$t" conv=fsync 2>/dev/null && mv -f "$t" "$d/epoch"; then
              echo "epoch_written=1"
            else
              rm -f "$t" 2>/dev/null
              echo "epoch_written=0"
            fi
          fi
        fi
        echo "warmpool-verify-end=$n"
        """

    /// The exact command line sent in the exec request.
    public static func commandLine(volume: VolumeSpec, nonce: String) -> String {
        precondition(!script.contains("'"), "the script must not contain a single quote")
        precondition(nonce.utf8.allSatisfy { isHexDigit($0) }, "the nonce is hex")
        var line = "/bin/sh -c " + shellQuote(script) + " warmpool-verify " + shellQuote(volume.path) + " "
            + shellQuote(volume.markerName) + " " + shellQuote(nonce)
        line += " " + shellQuote(volume.establishMarker ? volume.expectedID : "")
        if let epoch = volume.writeEpoch { line += " " + shellQuote("\(epoch)") + " " + shellQuote(volume.expectedID) }
        return line
    }

    /// One POSIX shell word with exactly the bytes of `text`: single quotes, with any single quote
    /// inside closed, escaped and reopened. (Validated inputs never contain one; this holds anyway.)
    public static func shellQuote(_ text: String) -> String {
        var quoted = "'"
        for character in text {
            if character == "'" { quoted += "'\\''" } else { quoted.append(character) }
        }
        return quoted + "'"
    }

    /// 16 random lower-case hex digits.
    public static func makeNonce() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        public var problem: String
        public var description: String { problem }
        init(_ problem: String) { self.problem = problem }
    }

    /// Parses the script's standard output. Strict: every line between the begin and end lines
    /// must be a known `key=value` with a well-formed value, each key at most once.
    public static func parse(_ output: [UInt8], nonce: String) throws(ParseError) -> RemoteVolumeFacts {
        var lines = output.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
            line.last == UInt8(ascii: "\r") ? String(decoding: line.dropLast(), as: UTF8.self) : String(decoding: line, as: UTF8.self)
        }[...]
        let begin = "warmpool-verify-begin=\(nonce)"
        let end = "warmpool-verify-end=\(nonce)"
        guard let start = lines.firstIndex(of: begin) else {
            throw ParseError("no begin line in the command's output")
        }
        lines = lines[(start + 1)...]
        guard let stop = lines.firstIndex(of: end) else {
            throw ParseError("the command's output ends without its end line")
        }
        var fields: [String: String] = [:]
        let known: Set<String> = [
            "version", "exists", "mounted", "marker_written", "marker", "marker_hex", "writable", "write_error", "free_kib",
            "epoch_found", "epoch_written",
        ]
        for line in lines[..<stop] {
            guard let equals = line.firstIndex(of: "=") else {
                throw ParseError("not a key=value line: \(printable(line))")
            }
            let key = String(line[..<equals])
            let value = String(line[line.index(after: equals)...])
            guard known.contains(key) else { throw ParseError("unknown key \(printable(key))") }
            guard fields[key] == nil else { throw ParseError("\(key) appears twice") }
            fields[key] = value
        }

        guard fields["version"] == "1" else { throw ParseError("unsupported version \(printable(fields["version"] ?? "(none)"))") }
        let exists = try flag(fields, "exists")
        guard exists else {
            return RemoteVolumeFacts(exists: false, mounted: false, marker: .missing, writable: nil, freeBytes: nil)
        }
        let mounted = try flag(fields, "mounted")

        let marker: RemoteVolumeFacts.Marker
        switch (fields["marker"], fields["marker_hex"]) {
        case ("missing", nil):
            marker = .missing
        case (nil, let hex?):
            guard let bytes = decodeHex(hex) else { throw ParseError("marker_hex is not hex") }
            marker = Self.marker(from: bytes)
        default:
            throw ParseError("expected exactly one of marker=missing and marker_hex=")
        }

        var writable: Bool?
        if fields["writable"] != nil { writable = try flag(fields, "writable") }
        if mounted, writable == nil { throw ParseError("no write probe result for a mounted volume") }

        var freeBytes: UInt64?
        if let kib = fields["free_kib"] {
            guard !kib.isEmpty, kib.utf8.count <= 19, kib.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                let value = UInt64(kib)
            else {
                throw ParseError("free_kib is not a number: \(printable(kib))")
            }
            freeBytes = value.multipliedReportingOverflow(by: 1024).overflow ? UInt64.max : value * 1024
        }
        let markerWritten = fields["marker_written"] == nil ? nil : try flag(fields, "marker_written")
        var facts = RemoteVolumeFacts(exists: true, mounted: mounted, marker: marker, markerWritten: markerWritten, writable: writable,
                                      writeError: fields["write_error"].map(printable), freeBytes: freeBytes)
        if fields["epoch_written"] != nil { facts.epochWritten = try flag(fields, "epoch_written") }
        if let found = fields["epoch_found"] {
            guard let value = UInt64(found) else { throw ParseError("epoch_found is not a number: \(printable(found))") }
            facts.epochFound = value
        }
        return facts
    }

    /// The marker's bytes as an id: whitespace around it trimmed, as the agent's probe does.
    static func marker(from bytes: [UInt8]) -> RemoteVolumeFacts.Marker {
        guard bytes.count <= markerLimit else { return .unusable("larger than \(markerLimit) bytes") }
        let text = String(decoding: bytes, as: UTF8.self)
        guard Array(text.utf8) == bytes else { return .unusable("not UTF-8") }
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }) else { return .present("") }
        let last = bytes.lastIndex(where: { !isSpace($0) })!
        return .present(String(decoding: bytes[first...last], as: UTF8.self))
    }

    private static func flag(_ fields: [String: String], _ key: String) throws(ParseError) -> Bool {
        switch fields[key] {
        case "1": return true
        case "0": return false
        case nil: throw ParseError("\(key) is missing")
        case let other?: throw ParseError("\(key) is not 0 or 1: \(printable(other))")
        }
    }

    static func decodeHex(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0, digits.count <= 2 * (markerLimit + 1) else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}

@inline(__always)
func isHexDigit(_ byte: UInt8) -> Bool {
    (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))
}
