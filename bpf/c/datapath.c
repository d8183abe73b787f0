/* tc programs of one node: pod veths (policy) and the VXLAN collect-metadata device (identity in
 * the VNI). Attach points, all with clsact + direct-action:
 *   from_pod    ingress of the node-side pod veth   (pod -> node: the pod's egress policy)
 *   to_pod      egress of the node-side pod veth    (node -> pod: the pod's ingress policy)
 *   to_tunnel   egress of the VXLAN device          (set the tunnel key: remote node, identity)
 *   from_tunnel ingress of the VXLAN device         (read the identity, fix the MAC trap)
 * The source identity travels between programs of one node in skb->mark (MARK_MAGIC_IDENTITY).
 * IPv4 only; other packets pass untouched (counted under not_ipv4).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include "common.h"

#ifndef TUNNEL_IFINDEX
#define TUNNEL_IFINDEX 0 /* 0: no redirect, the kernel routes remote traffic */
#endif

/* Egress strict mode (bpf.loader.strict_mode_defines): the strict IPv4 CIDR in host byte order
 * (10.0.0.0/8: NET 0x0A000000, MASK 0xFF000000); MASK 0 (or absent) turns strict mode off. */
#ifndef STRICT_CIDR4_MASK
#define STRICT_CIDR4_MASK 0
#endif
#ifndef STRICT_CIDR4_NET
#define STRICT_CIDR4_NET 0
#endif
#ifndef STRICT_ALLOW_REMOTE_NODE
#define STRICT_ALLOW_REMOTE_NODE 0
#endif

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

/* Longest-prefix lookup of an IPv4 address (network order) with cluster_id 0. */
static __always_inline struct ipcache_value *ipcache_lookup4(__u32 addr)
{
	struct ipcache_key key = {};

	key.prefixlen = 32 + 32;
	key.family = FAMILY_IPV4;
	__builtin_memcpy(key.ip, &addr, 4);
	return ipcache.lookup(&key);
}

struct flow4 {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
};

/* Parse Ethernet + IPv4, and the ports of TCP/UDP first fragments; -1 when not IPv4.
 * ICMP echo has no ports: the echo ID stands in for the requester's port (sport of a request,
 * dport of a reply) so that connection tracking can tell a reply from a new request. */
static __always_inline int parse4(struct __sk_buff *skb, struct flow4 *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u16 l4[2] = {};
	__u32 l4_off;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->sport = 0;
	f->dport = 0;
	if (ip->frag_off & bpf_htons(0x1FFF))
		return 0; /* not a first fragment: no L4 header */
	/* load_bytes: the header length is variable, no packet-pointer bounds to prove */
	l4_off = sizeof(*eth) + ip->ihl * 4;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, l4_off, l4, 4) == 0) {
			f->sport = l4[0];
			f->dport = l4[1];
		}
	} else if (f->proto == IPPROTO_ICMP) {
		__u8 icmp[6]; /* type, code, checksum, echo id */

		if (bpf_skb_load_bytes(skb, l4_off, icmp, sizeof(icmp)) == 0) {
			if (icmp[0] == 8)      /* echo request */
				__builtin_memcpy(&f->sport, &icmp[4], 2);
			else if (icmp[0] == 0) /* echo reply */
				__builtin_memcpy(&f->dport, &icmp[4], 2);
		}
	}
	return 0;
}

/* The source identity stamped by an earlier program of this node, else from the ipcache. */
static __always_inline __u32 source_identity(struct __sk_buff *skb, __u32 saddr)
{
	struct ipcache_value *src;

	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_IDENTITY)
		return skb->mark & IDENTITY_MASK;
	src = ipcache_lookup4(saddr);
	return src ? src->sec_identity : ID_WORLD;
}

/* Policy verdict for an endpoint and a remote identity. Lookup order, first hit wins:
 * (identity, port, proto), (identity, any port, proto), (identity, any, any), then the same
 * three with identity ID_ANY. Not enforced -> allow; enforced and no hit -> default deny. */
static __always_inline int policy_check(__u32 ep, __u32 remote, struct flow4 *f, __u8 dir, __u32 len,
					__u32 *reason)
{
	struct enforce_key ek = {};
	struct enforce_value *en;
	struct policy_key k = {};
	__u16 port;

	ek.endpoint_id = ep;
	ek.direction = dir;
	en = policy_enforce.lookup(&ek);
	if (!en || !en->enforced)
		return VERDICT_ALLOW;

	k.endpoint_id = ep;
	k.direction = dir;
	/* ICMP has no port: its rules use dport 0 (the echo ID in f->dport is for tracking only) */
	port = f->proto == IPPROTO_ICMP ? 0 : f->dport;
#pragma unroll
	for (int i = 0; i < 6; i++) {
		struct policy_value *v;

		k.remote_identity = i < 3 ? remote : ID_ANY;
		k.dport = (i % 3) == 0 ? port : 0;
		k.proto = (i % 3) == 2 ? 0 : f->proto;
		v = policy.lookup(&k);
		if (v) {
			__sync_fetch_and_add(&v->packets, 1);
			__sync_fetch_and_add(&v->bytes, len);
			if (v->verdict != VERDICT_ALLOW)
				*reason = REASON_POLICY_DENIED;
			return v->verdict;
		}
	}
	*reason = REASON_POLICY_DEFAULT_DENY;
	return VERDICT_DENY;
}

/* Minimal connection tracking so replies pass an enforced policy: a flow admitted in one
 * direction records its tuple; a packet whose reversed tuple is recorded is a reply. */
static __always_inline int ct_is_reply(struct flow4 *f)
{
	struct ct_key k = {};

	k.saddr = f->daddr;
	k.daddr = f->saddr;
	k.sport = f->dport;
	k.dport = f->sport;
	k.proto = f->proto;
	return ct.lookup(&k) != NULL;
}

static __always_inline void ct_track(struct flow4 *f)
{
	struct ct_key k = {};
	struct ct_value fresh = {1};
	struct ct_value *v;

	k.saddr = f->saddr;
	k.daddr = f->daddr;
	k.sport = f->sport;
	k.dport = f->dport;
	k.proto = f->proto;
	v = ct.lookup(&k);
	if (v)
		v->packets += 1; /* racy but only informative */
	else
		ct.update(&k, &fresh);
}

/* Admit a packet of a local endpoint's flow in direction dir, or count why not. */
static __always_inline int admit(struct endpoint_value *ep, __u32 remote, struct flow4 *f, __u8 dir, __u32 len)
{
	__u32 reason = REASON_FORWARDED;

	if (ct_is_reply(f)) {
		count(REASON_CT_REPLY, dir, len);
		return 1;
	}
	if (policy_check(ep->endpoint_id, remote, f, dir, len, &reason) != VERDICT_ALLOW) {
		count(reason, dir, len);
		return 0;
	}
	ct_track(f);
	return 1;
}

static __always_inline int in_strict_cidr4(__u32 addr)
{
	return (addr & bpf_htonl(STRICT_CIDR4_MASK)) == bpf_htonl(STRICT_CIDR4_NET);
}

/* Egress strict mode, as Cilium's strict_allow (drop reason 195): a packet to an endpoint on
 * another node, source and destination both in the strict CIDR, must be going to be encrypted
 * (encrypt_key set by the agent for WireGuard peers). Destinations on this node never match. */
static __always_inline int strict_denies(struct flow4 *f, struct ipcache_value *dst)
{
	if (!STRICT_CIDR4_MASK || !dst || dst->encrypt_key)
		return 0;
	if (!(dst->flags & (IPCACHE_F_HAS_TUNNEL_EP | IPCACHE_F_REMOTE_NODE_EP)))
		return 0;
	if (STRICT_ALLOW_REMOTE_NODE && dst->sec_identity == ID_REMOTE_NODE)
		return 0;
	return in_strict_cidr4(f->saddr) && in_strict_cidr4(f->daddr);
}

int from_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_value *ep = endpoints.lookup(&ifindex);
	struct ipcache_value *dst;
	struct flow4 f = {};

	if (!ep) {
		count(REASON_UNKNOWN_ENDPOINT, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (parse4(skb, &f) < 0) {
		count(REASON_NOT_IPV4, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	dst = ipcache_lookup4(f.daddr);
	if (!admit(ep, dst ? dst->sec_identity : ID_WORLD, &f, DIR_EGRESS, skb->len))
		return TC_ACT_SHOT;
	if (strict_denies(&f, dst)) {
		count(REASON_UNENCRYPTED, DIR_EGRESS, skb->len);
		return TC_ACT_SHOT;
	}

	/* to_tunnel (VXLAN egress) and to_pod (a local peer) read the sender's identity here. */
	skb->mark = MARK_MAGIC_IDENTITY | (ep->sec_identity & IDENTITY_MASK);
	count(REASON_FORWARDED, DIR_EGRESS, skb->len);
	if (TUNNEL_IFINDEX && dst && (dst->flags & IPCACHE_F_HAS_TUNNEL_EP) && !(dst->flags & IPCACHE_F_SKIP_TUNNEL))
		/* Straight to the VXLAN device: no route or neighbour entry needed for remote pods. */
		return bpf_redirect(TUNNEL_IFINDEX, 0);
	return TC_ACT_OK;
}

int to_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_value *ep = endpoints.lookup(&ifindex);
	struct flow4 f = {};
	__u32 src_id;

	if (!ep) {
		count(REASON_UNKNOWN_ENDPOINT, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (parse4(skb, &f) < 0) {
		count(REASON_NOT_IPV4, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	src_id = source_identity(skb, f.saddr);
	skb->mark = 0; /* ours, consumed: the pod need not see it */
	if (!admit(ep, src_id, &f, DIR_INGRESS, skb->len))
		return TC_ACT_SHOT;
	count(REASON_FORWARDED, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}

int to_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct ipcache_value *dst;
	struct flow4 f = {};
	__u64 flags = 0;

	if (parse4(skb, &f) < 0) {
		/* ARP and the like cannot cross a collect-metadata device without a key anyway. */
		count(REASON_NOT_IPV4, DIR_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	dst = ipcache_lookup4(f.daddr);
	if (!dst) {
		count(REASON_UNKNOWN_DESTINATION, DIR_EGRESS, skb->len);
		return TC_ACT_SHOT;
	}
	if (!(dst->flags & IPCACHE_F_HAS_TUNNEL_EP)) {
		count(REASON_NO_TUNNEL_ENDPOINT, DIR_EGRESS, skb->len);
		return TC_ACT_SHOT;
	}
	key.tunnel_id = source_identity(skb, f.saddr) & IDENTITY_MASK; /* the VNI is 24 bits */
	key.tunnel_ttl = 64;
	if (dst->flags & IPCACHE_F_IPV6_TUNNEL_EP) {
		__builtin_memcpy(key.remote_ipv6, dst->tunnel_endpoint, 16);
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		__u32 ep4;

		__builtin_memcpy(&ep4, dst->tunnel_endpoint, 4);
		key.remote_ipv4 = bpf_ntohl(ep4); /* this helper wants host order */
		flags = BPF_F_ZERO_CSUM_TX;
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags) < 0) {
		count(REASON_TUNNEL_ENCAP_FAILED, DIR_EGRESS, skb->len);
		return TC_ACT_SHOT;
	}
	skb->mark = 0; /* keep our mark out of the underlay's route lookup */
	count(REASON_TO_TUNNEL, DIR_EGRESS, skb->len);
	return TC_ACT_OK;
}

int from_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	__u32 id;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0 &&
	    bpf_skb_get_tunnel_key(skb, &key, sizeof(key), BPF_F_TUNINFO_IPV6) < 0) {
		count(REASON_NO_TUNNEL_KEY, DIR_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	id = key.tunnel_id & IDENTITY_MASK;
	if (id == ID_HOST)
		id = ID_REMOTE_NODE; /* a remote host is remote-node here, as in the ipcache */
	skb->mark = MARK_MAGIC_IDENTITY | id;
	/* The MAC trap: the sender wrote the inner destination MAC without knowing this device's
	 * address, so the frame arrives as PACKET_OTHERHOST and IP would drop it. It is for us. */
	if (skb->pkt_type == PACKET_OTHERHOST)
		bpf_skb_change_type(skb, PACKET_HOST);
	count(REASON_FROM_TUNNEL, DIR_INGRESS, skb->len);
	return TC_ACT_OK;
}
