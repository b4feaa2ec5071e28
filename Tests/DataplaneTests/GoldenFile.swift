import Foundation
import Testing

/// A golden file under Golden/: `rendered` must equal it. With `UPDATE_GOLDEN` set the file is
/// rewritten and the test fails, so an update can never pass as a test run.
func expectGolden(_ name: String, _ rendered: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/\(name).golden").path
    if ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] != nil {
        try rendered.write(toFile: path, atomically: true, encoding: .utf8)
        Issue.record("\(name).golden rewritten (UPDATE_GOLDEN is set): review the diff, then run without UPDATE_GOLDEN", sourceLocation: sourceLocation)
        return
    }
    let expected = try String(contentsOfFile: path, encoding: .utf8)
    #expect(rendered == expected, "\(name) differs from its golden file", sourceLocation: sourceLocation)
}
