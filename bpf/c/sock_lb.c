/* cgroup v2 socket load-balancing (IPv4): connect4 and sendmsg4 rewrite a service frontend to a
 * backend before the kernel routes anything, so no per-packet NAT exists; recvmsg4 rewrites a
 * UDP reply's source back to the frontend the application sent to.
 *
 * Backend choice (reference §5.2) is split: userspace keeps only healthy backends in the slots,
 * local ones first ([0, local_backend_count)), remote ones after; here the affinity picks the
 * preferred range and falls back to the other range when the preferred one is empty.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include "common.h"

#define SYS_REJECT  0 /* connect()/sendmsg() fail with EPERM */
#define SYS_PROCEED 1

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

static __always_inline int lb4_translate(struct bpf_sock_addr *ctx, int remember)
{
	struct frontend_key fk = {};
	struct slot_key sk = {};
	struct backend_key bk = {};
	struct service_value *svc;
	struct slot_value *sv;
	struct backend_value *be;
	__u32 addr = ctx->user_ip4;
	__u32 be_addr;

	__builtin_memcpy(fk.ip, &addr, 4);
	fk.port = (__u16)ctx->user_port; /* network order in the low 16 bits */
	fk.proto = ctx->protocol;
	fk.family = FAMILY_IPV4;
	svc = services.lookup(&fk);
	if (!svc)
		return SYS_PROCEED; /* not a service */

	sk.frontend = fk;
	if (pick_slot(svc, &sk.slot) < 0)
		goto no_backend;
	sv = svc_slots.lookup(&sk);
	if (!sv)
		goto no_backend;
	bk.backend_id = sv->backend_id;
	be = backends.lookup(&bk);
	if (!be || be->family != FAMILY_IPV4)
		goto no_backend;

	__builtin_memcpy(&be_addr, be->ip, 4);
	if (remember) {
		/* UDP: replies come from the backend; recvmsg4 maps them back per socket. */
		struct revnat_key rk = {};

		rk.cookie = bpf_get_socket_cookie(ctx);
		__builtin_memcpy(rk.ip, &be_addr, 4);
		rk.port = be->port;
		rk.family = FAMILY_IPV4;
		sock_revnat.update(&rk, &fk);
	}
	ctx->user_ip4 = be_addr;
	ctx->user_port = be->port;
	count(REASON_LB_TRANSLATED, DIR_EGRESS, 0);
	return SYS_PROCEED;

no_backend:
	/* Never let a frontend address leave the node: it routes nowhere. */
	count(REASON_LB_NO_BACKEND, DIR_EGRESS, 0);
	return SYS_REJECT;
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

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.ip, &addr, 4);
	rk.port = (__u16)ctx->user_port;
	rk.family = FAMILY_IPV4;
	fk = sock_revnat.lookup(&rk);
	if (!fk)
		return SYS_PROCEED;
	__builtin_memcpy(&fe_addr, fk->ip, 4);
	ctx->user_ip4 = fe_addr;
	ctx->user_port = fk->port;
	count(REASON_LB_REVNAT, DIR_INGRESS, 0);
	return SYS_PROCEED;
}
