import Foundation
import Testing

/// The tree's promise: what ships (Sources/) never uses what only the lab needs (Lab/).
@Suite("Architecture: shipped code never depends on the lab")
struct DependencyDirectionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Module names of the lab: every folder under Lab/Sources.
    static func labModules() throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("Lab/Sources").path))
    }

    /// `import X` lines of every Swift file below `folder`, as (file, module).
    static func imports(under folder: String) throws -> [(String, String)] {
        let base = root.appendingPathComponent(folder)
        guard let walker = FileManager.default.enumerator(atPath: base.path) else { return [] }
        var out: [(String, String)] = []
        for case let rel as String in walker where rel.hasSuffix(".swift") {
            let text = try String(contentsOf: base.appendingPathComponent(rel), encoding: .utf8)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ")
                if let i = words.firstIndex(of: "import"), i + 1 < words.count, words[..<i].allSatisfy({ $0.hasPrefix("@") || $0 == "public" || $0 == "internal" }) {
                    out.append(("\(folder)/\(rel)", String(words[i + 1])))
                }
            }
        }
        return out
    }

    @Test("the scan sees the lab's own imports of shipped modules (the check is not blind)")
    func scanSeesImports() throws {
        let lab = try Self.imports(under: "Lab/Sources")
        #expect(try Self.labModules().isSuperset(of: ["NodeLab", "MeshProxy", "LabCLI"]))
        #expect(lab.contains { $0.1 == "Dataplane" }, "NodeLab imports Dataplane")
        #expect(lab.contains { $0.1 == "NodeLab" }, "LabCLI imports NodeLab")
    }

    @Test("no file under Sources/ imports a lab module")
    func shippedImportsNoLab() throws {
        let lab = try Self.labModules()
        let shipped = try Self.imports(under: "Sources")
        #expect(shipped.count > 50, "the scan read the shipped sources")
        let offenders = shipped.filter { lab.contains($0.1) }
        #expect(offenders.isEmpty, "shipped code imports lab modules: \(offenders)")
    }

    @Test("Package.swift: no shipped target lists a lab target as a dependency")
    func manifestDirection() throws {
        let manifest = try String(contentsOf: Self.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        guard let start = manifest.range(of: "let shipped: [Target] = ["), let end = manifest.range(of: "let lab: [Target] = [") else {
            Issue.record("Package.swift no longer has the shipped/lab split this test reads")
            return
        }
        let shippedBlock = manifest[start.upperBound..<end.lowerBound]
        #expect(shippedBlock.contains("\"RedirectAgent\""), "the shipped block was found")
        for module in try Self.labModules() {
            #expect(!shippedBlock.contains("\"\(module)\""), "a shipped target depends on lab target \(module)")
        }
    }
}
