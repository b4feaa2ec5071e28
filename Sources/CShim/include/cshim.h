// Thin C wrappers over libc calls and macros that Swift cannot import directly.
// Rule: one call each, no logic; errors are returned as -1 with errno set, as libc does.
#ifndef CSHIM_H
#define CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>

/// setns(2): switch the calling thread into the namespace behind fd.
int cshim_setns(int fd, int nstype);
/// The CLONE_NEWNET constant.
int cshim_clone_newnet(void);
/// splice(2) with SPLICE_F_MOVE | SPLICE_F_MORE.
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
/// accept4(2) with SOCK_CLOEXEC.
int cshim_accept_cloexec(int fd);
/// SOCK_STREAM, SOCK_SEQPACKET and SOCK_CLOEXEC.
int cshim_sock_stream(void);
int cshim_sock_seqpacket(void);
int cshim_sock_cloexec(void);
/// The thread's errno.
int cshim_errno(void);
/// gettid(2).
int cshim_gettid(void);

#endif
