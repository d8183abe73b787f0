/* cgroup v2 socket load-balancing (IPv4 and IPv6): connect4/6 and sendmsg4/6 rewrite a service
 * frontend to a backend before the kernel routes anything, so no per-packet NAT exists;
 * recvmsg4/6 rewrite a UDP reply's source back to the frontend the application sent to.
 *
 * Backend choice (reference §5.2) is split: userspace keeps only healthy backends in the slots,
 * local ones first ([0, local_backend_count)), remote ones after; here the affinity picks the
 * preferred range and falls back to the other range when the preferred one is empty.
 *
 * Families never mix: a frontend of family F only translates to backends of family F (a backend
 * of the other family counts as "no backend"). IPv4-mapped destinations (::ffff:a.b.c.d) on IPv6
 * sockets are translated with the IPv4 frontends and rewritten to the IPv4-mapped backend, as
 * Cilium does. Which hook sees them (checked on 6.18): TCP/UDP connect() runs connect6 only; an
 * unconnected UDP sendto() runs sendmsg4 (udpv6_sendmsg hands it to udp_sendmsg before the v6
 * hook), so the mapped branch of sendmsg6 is only a safety net; the reply's ::ffff:backend source
 * runs recvmsg6 only. The revnat entry is the same (family 1) whichever hook wrote it.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "common.h"

#define SYS_REJECT  0 /* connect()/sendmsg() fail with EPERM */
#define SYS_PROCEED 1

#define LB_NOT_SERVICE 0
#define LB_BACKEND     1
#define LB_NO_BACKEND  (-1)

/* The third 32-bit word of an IPv4-mapped IPv6 address (0000:ffff), network order. The datapath
 * runs on little-endian hosts only (the map layouts say so). */
#define V4MAPPED_WORD2 0xffff0000U

/* Per-CPU counters: no atomics needed, userspace sums the CPUs. */
static __always_inline void count(__u32 reason, __u8 direction, __u32 bytes)
{
	__u32 idx = (reason << 1) | direction;
	struct counter_value *c = counters.lookup(&idx);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* A slot in the range the affinity prefers, or -1 when the service has no backend at all. */
static __always_inline int pick_slot(struct service_value *svc, __u16 *slot)
{
	__u16 total = svc->backend_count;
	__u16 local = svc->local_backend_count < total ? svc->local_backend_count : total;
	__u16 remote = total - local;
	__u16 start = 0, n = total;

	if (svc->affinity == AFFINITY_LOCAL) {
		start = local ? 0 : local;
		n = local ? local : remote;
	} else if (svc->affinity == AFFINITY_REMOTE) {
		start = remote ? local : 0;
		n = remote ? remote : local;
	}
	if (n == 0)
		return -1;
	*slot = start + bpf_get_prandom_u32() % n;
	return 0;
}

/* Frontend -> backend, shared by both families: LB_NOT_SERVICE, LB_NO_BACKEND, or LB_BACKEND
 * with *out the chosen backend (always of the frontend's family). */
static __always_inline int lb_select(struct frontend_key *fk, struct backend_value **out)
{
	struct slot_key sk = {};
	struct backend_key bk = {};
	struct service_value *svc;
	struct slot_value *sv;
	struct backend_value *be;

	svc = services.lookup(fk);
	if (!svc)
		return LB_NOT_SERVICE;
	sk.frontend = *fk;
	if (pick_slot(svc, &sk.slot) < 0)
		return LB_NO_BACKEND;
	sv = svc_slots.lookup(&sk);
	if (!sv)
		return LB_NO_BACKEND;
	bk.backend_id = sv->backend_id;
	be = backends.lookup(&bk);
	if (!be || be->family != fk->family)
		return LB_NO_BACKEND;
	*out = be;
	return LB_BACKEND;
}

/* UDP: replies come from the backend; recvmsg4/6 map them back per socket. */
static __always_inline void lb_remember(struct bpf_sock_addr *ctx, struct backend_value *be,
					struct frontend_key *fk)
{
	struct revnat_key rk = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	if (be->family == FAMILY_IPV4)
		__builtin_memcpy(rk.ip, be->ip, 4); /* the rest stays zero, as recvmsg looks it up */
	else
		__builtin_memcpy(rk.ip, be->ip, 16);
	rk.port = be->port;
	rk.family = be->family;
	sock_revnat.update(&rk, fk);
}

/* The reverse of lb_remember: the frontend a reply from rk's backend belongs to, or NULL (the
 * caller fills ip, port and family). */
static __always_inline struct frontend_key *lb_revnat(struct bpf_sock_addr *ctx, struct revnat_key *rk)
{
	rk->cookie = bpf_get_socket_cookie(ctx);
	return sock_revnat.lookup(rk);
}

static __always_inline int lb_no_backend(void)
{
	/* Never let a frontend address leave the node: it routes nowhere. */
	count(REASON_LB_NO_BACKEND, DIR_EGRESS, 0);
	return SYS_REJECT;
}

static __always_inline int lb4_translate(struct bpf_sock_addr *ctx, int remember)
{
	struct frontend_key fk = {};
	struct backend_value *be = NULL;
	__u32 addr = ctx->user_ip4;
	__u32 be_addr;
	int r;

	__builtin_memcpy(fk.ip, &addr, 4);
	fk.port = (__u16)ctx->user_port; /* network order in the low 16 bits */
	fk.proto = ctx->protocol;
	fk.family = FAMILY_IPV4;
	r = lb_select(&fk, &be);
	if (r == LB_NOT_SERVICE)
		return SYS_PROCEED;
	if (r != LB_BACKEND || !be)
		return lb_no_backend();

	__builtin_memcpy(&be_addr, be->ip, 4);
	if (remember)
		lb_remember(ctx, be, &fk);
	ctx->user_ip4 = be_addr;
	ctx->user_port = be->port;
	count(REASON_LB_TRANSLATED, DIR_EGRESS, 0);
	return SYS_PROCEED;
}

/* ctx->user_ip6 is read and written one 32-bit word at a time (the only access the verifier
 * allows for writes). */
static __always_inline int lb6_translate(struct bpf_sock_addr *ctx, int remember)
{
	struct frontend_key fk = {};
	struct backend_value *be = NULL;
	__u32 a[4], b[4];
	int mapped, r;

	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	mapped = a[0] == 0 && a[1] == 0 && a[2] == V4MAPPED_WORD2;
	if (mapped) {
		__builtin_memcpy(fk.ip, &a[3], 4);
		fk.family = FAMILY_IPV4;
	} else {
		__builtin_memcpy(fk.ip, a, 16);
		fk.family = FAMILY_IPV6;
	}
	fk.port = (__u16)ctx->user_port;
	fk.proto = ctx->protocol;
	r = lb_select(&fk, &be);
	if (r == LB_NOT_SERVICE)
		return SYS_PROCEED;
	if (r != LB_BACKEND || !be)
		return lb_no_backend();

	__builtin_memcpy(b, be->ip, 16);
	if (remember)
		lb_remember(ctx, be, &fk);
	if (mapped) {
		ctx->user_ip6[3] = b[0]; /* words 0..2 stay ::ffff */
	} else {
		ctx->user_ip6[0] = b[0];
		ctx->user_ip6[1] = b[1];
		ctx->user_ip6[2] = b[2];
		ctx->user_ip6[3] = b[3];
	}
	ctx->user_port = be->port;
	count(REASON_LB_TRANSLATED, DIR_EGRESS, 0);
	return SYS_PROCEED;
}

int sock_connect4(struct bpf_sock_addr *ctx)
{
	return lb4_translate(ctx, ctx->protocol == IPPROTO_UDP);
}

int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return lb4_translate(ctx, 1);
}

int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct revnat_key rk = {};
	struct frontend_key *fk;
	__u32 addr = ctx->user_ip4;
	__u32 fe_addr;

	__builtin_memcpy(rk.ip, &addr, 4);
	rk.port = (__u16)ctx->user_port;
	rk.family = FAMILY_IPV4;
	fk = lb_revnat(ctx, &rk);
	if (!fk || fk->family != FAMILY_IPV4)
		return SYS_PROCEED;
	__builtin_memcpy(&fe_addr, fk->ip, 4);
	ctx->user_ip4 = fe_addr;
	ctx->user_port = fk->port;
	count(REASON_LB_REVNAT, DIR_INGRESS, 0);
	return SYS_PROCEED;
}

int sock_connect6(struct bpf_sock_addr *ctx)
{
	return lb6_translate(ctx, ctx->protocol == IPPROTO_UDP);
}

int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return lb6_translate(ctx, 1);
}

int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct revnat_key rk = {};
	struct frontend_key *fk;
	__u32 a[4], f[4];
	int mapped;

	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	mapped = a[0] == 0 && a[1] == 0 && a[2] == V4MAPPED_WORD2;
	if (mapped) {
		__builtin_memcpy(rk.ip, &a[3], 4);
		rk.family = FAMILY_IPV4;
	} else {
		__builtin_memcpy(rk.ip, a, 16);
		rk.family = FAMILY_IPV6;
	}
	rk.port = (__u16)ctx->user_port;
	fk = lb_revnat(ctx, &rk);
	if (!fk || fk->family != (mapped ? FAMILY_IPV4 : FAMILY_IPV6))
		return SYS_PROCEED;
	__builtin_memcpy(f, fk->ip, 16);
	if (mapped) {
		ctx->user_ip6[3] = f[0];
	} else {
		ctx->user_ip6[0] = f[0];
		ctx->user_ip6[1] = f[1];
		ctx->user_ip6[2] = f[2];
		ctx->user_ip6[3] = f[3];
	}
	ctx->user_port = fk->port;
	count(REASON_LB_REVNAT, DIR_INGRESS, 0);
	return SYS_PROCEED;
}
