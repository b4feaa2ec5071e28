// Thin C wrappers over libc calls and macros that Swift cannot import directly.
// Rule: one call each, no logic; errors are returned as -1 with errno set, as libc does.
#ifndef CSHIM_H
#define CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <spawn.h>

/// posix_spawn_file_actions_addclosefrom_np: the child closes every fd >= from (a GNU extension
/// Swift does not see without _GNU_SOURCE).
int cshim_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

/// pidfd_open(2): a descriptor that polls readable once the process has exited.
int cshim_pidfd_open(pid_t pid);
/// pidfd_send_signal(2) with no siginfo; signal 0 only asks whether the process is still alive.
int cshim_pidfd_send_signal(int pidfd, int sig);
/// getsockopt SO_PEERPIDFD (Linux 6.5+): a pidfd of the process that connected a unix socket's peer end; -1 and errno
/// (ENOPROTOOPT before 6.5).
int cshim_peer_pidfd(int fd);

/// setns(2): switch the calling thread into the namespace behind fd.
int cshim_setns(int fd, int nstype);
/// unshare(CLONE_NEWNET): the calling thread gets a new, empty network namespace.
int cshim_unshare_net(void);
/// The CLONE_NEWNET constant.
int cshim_clone_newnet(void);
/// CLONE_NEWCGROUP, for setns(2).
int cshim_clone_newcgroup(void);
/// splice(2) with SPLICE_F_MOVE (not SPLICE_F_MORE: it corks TCP and delays small replies).
ssize_t cshim_splice(int fd_in, int fd_out, size_t len);
/// pipe2(2) with O_CLOEXEC.
int cshim_pipe_cloexec(int fds[2]);
/// fcntl(F_SETPIPE_SZ).
int cshim_set_pipe_size(int fd, int size);
/// prctl(PR_SET_PDEATHSIG, sig): the child dies with its parent.
int cshim_set_parent_death_signal(int sig);
/// getsockopt(SOL_IP, SO_ORIGINAL_DST): the pre-NAT IPv4 destination.
int cshim_original_dst4(int fd, struct sockaddr_in *out);
/// getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST): the pre-NAT IPv6 destination.
int cshim_original_dst6(int fd, struct sockaddr_in6 *out);
/// setsockopt(SOL_IP, IP_TRANSPARENT) or (SOL_IPV6, IPV6_TRANSPARENT).
int cshim_set_transparent(int fd, int ipv6);
/// setsockopt(SOL_SOCKET, SO_MARK).
int cshim_set_mark(int fd, uint32_t mark);
/// getsockopt(SOL_SOCKET, SO_MARK).
int cshim_get_mark(int fd, uint32_t *mark);
/// getsockopt(SOL_SOCKET, SO_PEERCRED): the peer's pid as the caller's pid namespace sees it (0: not visible).
int cshim_peer_pid(int fd, int32_t *pid);
/// accept4(2) with SOCK_CLOEXEC.
int cshim_accept_cloexec(int fd);
/// SOCK_STREAM, SOCK_SEQPACKET and SOCK_CLOEXEC.
int cshim_sock_stream(void);
/** SOCK_DGRAM. */
int cshim_sock_dgram(void);
int cshim_sock_seqpacket(void);
int cshim_sock_cloexec(void);
/// sendmsg(2) of one datagram with an optional file descriptor as SCM_RIGHTS (fd < 0: none).
ssize_t cshim_send_with_fd(int sock, const void *data, size_t len, int fd);
/// recvmsg(2) of one datagram; *fd receives a passed descriptor or -1. MSG_CMSG_CLOEXEC.
ssize_t cshim_recv_with_fd(int sock, void *buf, size_t len, int *fd);
/// The thread's errno.
int cshim_errno(void);
/// gettid(2).
int cshim_gettid(void);


/* ---- libbpf: thin wrappers over calls that take LIBBPF_OPTS structs or a va_list ---- */
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "redirect_abi.h"

/// Routes libbpf's log lines to `sink(level, line)` (level: 0 warn, 1 info, 2 debug).
void cshim_libbpf_set_logger(void (*sink)(int level, const char *line));
/// bpf_object__open_file with pin_root_path set (maps with LIBBPF_PIN_BY_NAME pin and reuse there).
struct bpf_object *cshim_bpf_object_open(const char *path, const char *pin_root);
/// bpf_tc_hook_create for a clsact qdisc on ifindex (in the calling thread's namespace).
int cshim_tc_hook_create(int ifindex);
/// bpf_tc_hook_destroy of the whole clsact qdisc.
int cshim_tc_hook_destroy(int ifindex);
/// bpf_tc_attach (direct-action) at ingress (1) or egress (0); replace != 0 swaps atomically.
int cshim_tc_attach(int ifindex, int ingress, int prog_fd, uint32_t handle, uint32_t priority, int replace);
/// bpf_tc_detach.
int cshim_tc_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority);
/// bpf_tc_query: the program id attached at handle/priority.
int cshim_tc_query(int ifindex, int ingress, uint32_t handle, uint32_t priority, uint32_t *prog_id);
/// bpf_link_create for a netns attach point (BPF_SK_LOOKUP) from a namespace fd.
int cshim_link_create_sk_lookup(int prog_fd, int netns_fd);
/// Loads a two-instruction LSM program for the socket_create hook and closes it: 0 when the kernel
/// loads LSM programs (CONFIG_BPF_LSM, and no policy such as lockdown refusing them), else -errno.
int cshim_probe_lsm_program(void);
/// Attaches an LSM program to its hook (BPF_RAW_TRACEPOINT_OPEN with no name): a link fd, or -errno.
int cshim_link_create_lsm(int prog_fd);
/// The ifindex a tcx link is attached to (0 once its device is gone), or -errno (-EINVAL: not a tcx link).
int cshim_link_tcx_ifindex(int link_fd, uint32_t *ifindex);
/// Makes `prog` a netfilter program (BPF_PROG_TYPE_NETFILTER, expected attach BPF_NETFILTER) before
/// load: libbpf 1.1 does not know the "netfilter" section.
int cshim_program_set_netfilter(struct bpf_program *prog);
/// Loads a two-instruction netfilter program and closes it: 0 when the kernel has them (6.4+), else -errno.
int cshim_probe_netfilter_program(void);
/// BPF_LINK_CREATE of a netfilter program at `hooknum` of family `pf` (NFPROTO_IPV4 2, NFPROTO_IPV6 10)
/// in the calling thread's network namespace; the link fd, or -errno.
int cshim_link_create_netfilter(int prog_fd, uint32_t pf, uint32_t hooknum, int32_t priority);
/// bpf_link_create with a tcx attach type (46 ingress, 47 egress) on ifindex.
int cshim_link_create_tcx(int prog_fd, int ifindex, int ingress);
/// bpf_prog_test_run_opts on a packet with an __sk_buff context (mark, ifindex); returns the
/// program's verdict in *retval, the output packet and mark.
int cshim_prog_test_run_skb(int prog_fd, const void *data, uint32_t size, void *out, uint32_t *out_size,
                            uint32_t mark, uint32_t ifindex, uint32_t *retval, uint32_t *mark_out);
/// The program id behind a file descriptor.
int cshim_prog_id(int prog_fd, uint32_t *id);
/// The id of the program a BPF link runs.
int cshim_link_prog_id(int link_fd, uint32_t *id);
/// run_time_ns and run_cnt of a program (kernel.bpf_stats_enabled must be 1 while it runs).
int cshim_prog_stats(int prog_fd, uint64_t *run_time_ns, uint64_t *run_cnt);
/// The program tag (8 bytes) behind a file descriptor.
int cshim_prog_tag(int prog_fd, uint8_t tag[8]);
/// statfs f_type == BPF_FS_MAGIC.
int cshim_is_bpffs(const char *path);
/// mount("bpf", path, "bpf", 0, NULL).
int cshim_mount_bpffs(const char *path);
/// umount2(path, MNT_DETACH).
int cshim_umount(const char *path);
/// The number of possible CPUs (per-CPU map value count).
int cshim_num_possible_cpus(void);

#endif
