/// Sizes as OpenBSD's scan_scaled(3) reads them: a number, optionally with a fraction, and an
/// optional unit B, K, M, G, T, P or E (any case), each 1024 times the one before.
public enum ScaledSize {
    /// Why a text is not a size, as scan_scaled(3) tells EINVAL from ERANGE.
    public enum Problem: Error, Equatable, Sendable {
        /// Not a number with an optional fraction and unit.
        case invalid
        /// Well formed, but more than 64 bits of bytes.
        case outOfRange
    }

    /// The size in bytes, nil when the text is not one (either problem).
    public static func parse(_ text: String) -> UInt64? {
        try? scan(text).get()
    }

    public static func scan(_ text: String) -> Result<UInt64, Problem> {
        var s = Substring(text.trimmingCharactersInBlanks())
        guard !s.isEmpty else { return .failure(.invalid) }
        var shift: UInt64 = 0
        if let last = s.last, let idx = "BKMGTPE".firstIndex(of: Character(last.uppercased())) {
            shift = UInt64("BKMGTPE".distance(from: "BKMGTPE".startIndex, to: idx)) * 10
            s = s.dropLast()
        }
        let parts = s.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.allSatisfy(\.isASCIIDigit) else { return .failure(.invalid) }
        if parts.count == 2 {
            let frac = parts[1]
            guard !frac.isEmpty, frac.count <= 18, frac.allSatisfy(\.isASCIIDigit), shift > 0 else { return .failure(.invalid) }
        }
        // Only digits from here on: what does not fit is too large, not malformed.
        guard let w = UInt64(whole) else { return .failure(.outOfRange) }
        let unit: UInt64 = 1 << shift
        let (base, o1) = w.multipliedReportingOverflow(by: unit)
        guard !o1 else { return .failure(.outOfRange) }
        guard parts.count == 2, let f = UInt64(parts[1]) else { return .success(base) }
        var denom: UInt64 = 1
        for _ in 0..<parts[1].count { denom *= 10 }
        // f/denom of a unit, rounded down; unit <= 2^60 and f < denom <= 10^18: use 128-bit math.
        let (hi, lo) = f.multipliedFullWidth(by: unit)
        let (q, _) = denom.dividingFullWidth((high: hi, low: lo))
        let (sum, o2) = base.addingReportingOverflow(q)
        return o2 ? .failure(.outOfRange) : .success(sum)
    }

    /// `512M`, `1G`, or bytes when not a whole number of KiB.
    public static func format(_ bytes: UInt64) -> String {
        var v = bytes
        var i = 0
        let units = ["", "K", "M", "G", "T", "P", "E"]
        while v != 0 && v % 1024 == 0 && i < units.count - 1 {
            v /= 1024
            i += 1
        }
        return "\(v)\(units[i])"
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

extension String {
    func trimmingCharactersInBlanks() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
