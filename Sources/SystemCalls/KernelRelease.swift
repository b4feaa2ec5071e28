import Glibc

/// The running kernel's release (uname -r), for the features that only a version tells apart.
public enum KernelRelease {
    /// The release string, e.g. `6.1.0-57-amd64`.
    public static var string: String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Major and minor version.
    public static var version: (major: Int, minor: Int) {
        let v = string.split(separator: ".").prefix(2).map { Int($0.prefix { $0.isNumber }) ?? 0 }
        return (v.first ?? 0, v.count > 1 ? v[1] : 0)
    }

    /// Whether the kernel is `major.minor` or later.
    public static func atLeast(_ major: Int, _ minor: Int) -> Bool {
        let v = version
        return v.major > major || (v.major == major && v.minor >= minor)
    }
}
