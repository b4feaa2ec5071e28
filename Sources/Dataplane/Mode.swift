public enum DataplaneMode: String, Sendable, CaseIterable { case ebpf, iptables, auto }
