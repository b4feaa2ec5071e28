import Foundation

/// The discovery documents kubectl reads before anything else, and the tables it asks for.
enum Discovery {
    static let version: JSONValue = .object([
        "major": .string("1"), "minor": .string("32"), "gitVersion": .string("v1.32.0-redirect-lab"),
        "platform": .string("linux/amd64"), "goVersion": .string("none"), "compiler": .string("none"),
        "gitCommit": .string(""), "gitTreeState": .string("clean"), "buildDate": .string("2026-01-01T00:00:00Z"),
    ])

    static func apiVersions(_ url: String) -> JSONValue {
        .object(["kind": .string("APIVersions"), "versions": .array([.string("v1")]),
                 "serverAddressByClientCIDRs": .array([.object(["clientCIDR": .string("0.0.0.0/0"), "serverAddress": .string(url.replacingOccurrences(of: "https://", with: ""))])])])
    }

    static let groups: JSONValue = .object(["kind": .string("APIGroupList"), "apiVersion": .string("v1"), "groups": .array([])])

    static let coreResources: JSONValue = {
        func resource(_ name: String, _ kind: String, namespaced: Bool, verbs: [String], short: [String] = []) -> JSONValue {
            .object(["name": .string(name), "singularName": .string(name.hasSuffix("/status") ? "" : kind.lowercased()), "namespaced": .bool(namespaced),
                     "kind": .string(kind), "verbs": .array(verbs.map(JSONValue.string)), "shortNames": .array(short.map(JSONValue.string))])
        }
        let all = ["create", "delete", "get", "list", "patch", "watch"]
        return .object(["kind": .string("APIResourceList"), "groupVersion": .string("v1"), "resources": .array([
            resource("namespaces", "Namespace", namespaced: false, verbs: all, short: ["ns"]),
            resource("pods", "Pod", namespaced: true, verbs: all, short: ["po"]),
            resource("pods/status", "Pod", namespaced: true, verbs: ["get", "patch"]),
        ])])
    }()
}

/// Server-side printing: kubectl asks for a meta.k8s.io Table and prints its rows.
enum Tables {
    static func table(_ kind: Kind, _ objects: [JSONValue], resourceVersion: Int) -> JSONValue {
        func column(_ name: String, format: String = "") -> JSONValue {
            .object(["name": .string(name), "type": .string("string"), "format": .string(format), "description": .string(""), "priority": .number(0)])
        }
        let columns: [JSONValue] = kind == .pod
            ? [column("Name", format: "name"), column("Status"), column("IP"), column("Node"), column("Age")]
            : [column("Name", format: "name"), column("Status"), column("Age")]
        let rows: [JSONValue] = objects.map { o in
            let name = o[path: ["metadata", "name"]] ?? .string("")
            let age = JSONValue.string(Self.age(o[path: ["metadata", "creationTimestamp"]]?.string))
            let cells: [JSONValue] = kind == .pod
                ? [name, o[path: ["status", "phase"]] ?? .string("Pending"), o[path: ["status", "podIP"]] ?? .string("<none>"),
                   o[path: ["spec", "nodeName"]] ?? .string("<none>"), age]
                : [name, o[path: ["status", "phase"]] ?? .string("Active"), age]
            let partial = JSONValue.object(["kind": .string("PartialObjectMetadata"), "apiVersion": .string("meta.k8s.io/v1"),
                                            "metadata": o["metadata"] ?? .object([:])])
            return .object(["cells": .array(cells), "object": partial])
        }
        return .object(["kind": .string("Table"), "apiVersion": .string("meta.k8s.io/v1"),
                         "metadata": .object(["resourceVersion": .string("\(resourceVersion)")]),
                         "columnDefinitions": .array(columns), "rows": .array(rows)])
    }

    static func age(_ created: String?) -> String {
        guard let created, let t = ISO8601DateFormatter().date(from: created) else { return "<unknown>" }
        let s = max(0, Int(Date().timeIntervalSince(t)))
        return s < 120 ? "\(s)s" : s < 7200 ? "\(s / 60)m" : "\(s / 3600)h"
    }
}
