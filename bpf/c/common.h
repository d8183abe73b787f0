/* Shared layouts, pinned maps and helpers of the clustermesh datapath (compiled by bcc).
 *
 * Every struct here mirrors a ctypes Structure in bpf/layouts.py; the _Static_asserts pin the
 * sizes both sides assume. Maps are declared BPF_TABLE_PINNED at PIN_DIR "/<name>": userspace
 * (bpf/maps.py) creates and pins them with the checked layout before compiling, so bcc only
 * opens them and the entries survive program reloads and agent restarts.
 *
 * No function here touches a map: bcc rewrites map calls (map.lookup()) only in the main source
 * file, so such helpers live in the .c files.
 */
#ifndef CLUSTERMESH_COMMON_H
#define CLUSTERMESH_COMMON_H

#include <uapi/linux/bpf.h>

#ifndef PIN_DIR
#error "PIN_DIR must be defined (the node's bpffs directory)"
#endif

#define FAMILY_IPV4 1
#define FAMILY_IPV6 2

#define IPCACHE_F_SKIP_TUNNEL    (1 << 0)
#define IPCACHE_F_HAS_TUNNEL_EP  (1 << 1)
#define IPCACHE_F_IPV6_TUNNEL_EP (1 << 2)
#define IPCACHE_F_REMOTE_CLUSTER (1 << 3)
#define IPCACHE_F_REMOTE_NODE_EP (1 << 4) /* on another node (native mode has no tunnel endpoint to say so) */

#define BACKEND_F_HEALTHY (1 << 0)
#define BACKEND_F_LOCAL   (1 << 1)

#define AFFINITY_NONE   0
#define AFFINITY_LOCAL  1
#define AFFINITY_REMOTE 2

#define DIR_INGRESS 0
#define DIR_EGRESS  1

#define VERDICT_DENY  0
#define VERDICT_ALLOW 1

/* Reserved identities (pkg/identity/numericidentity.go). */
#define ID_ANY         0 /* policy key wildcard */
#define ID_HOST        1
#define ID_WORLD       2
#define ID_REMOTE_NODE 6

/* skb->mark = magic in the top byte | 24-bit source identity (identities fit the VNI). */
#define MARK_MAGIC_IDENTITY 0xCE000000
#define MARK_MAGIC_MASK     0xFF000000
#define IDENTITY_MASK       0x00FFFFFF

/* Counter reasons: same numbers as bpf.layouts.Reason. */
#define REASON_FORWARDED           0
#define REASON_POLICY_DENIED       1
#define REASON_POLICY_DEFAULT_DENY 2
#define REASON_NO_TUNNEL_ENDPOINT  3
#define REASON_UNKNOWN_DESTINATION 4
#define REASON_TUNNEL_ENCAP_FAILED 5
#define REASON_TO_TUNNEL           6
#define REASON_FROM_TUNNEL         7
#define REASON_NO_TUNNEL_KEY       8
#define REASON_NOT_IPV4            9
#define REASON_UNKNOWN_ENDPOINT    10
#define REASON_CT_REPLY            11
#define REASON_LB_TRANSLATED       12
#define REASON_LB_NO_BACKEND       13
#define REASON_LB_REVNAT           14
#define REASON_UNENCRYPTED         15 /* strict mode; Cilium's drop reason 195, DROP_UNENCRYPTED_TRAFFIC */
#define REASON_SLOTS               32

struct ipcache_key {
	__u32 prefixlen;   /* 32 (cluster_id, pad, family) + IP prefix bits */
	__u16 cluster_id;  /* 0 for every entry, as Cilium OSS */
	__u8  pad;
	__u8  family;
	__u8  ip[16];
};

struct ipcache_value {
	__u32 sec_identity;
	__u8  tunnel_endpoint[16]; /* IPv4 in the first 4 bytes, network order */
	__u16 cluster_id;
	__u8  encrypt_key;
	__u8  flags;               /* IPCACHE_F_* */
};

struct frontend_key {
	__u8  ip[16];
	__u16 port;   /* network order */
	__u8  proto;  /* IPPROTO_* */
	__u8  family;
};

struct service_value {
	__u16 backend_count;       /* slots 0..backend_count-1 */
	__u8  affinity;            /* AFFINITY_* */
	__u8  flags;
	__u16 local_backend_count; /* slots 0..local-1 are local, the rest remote */
	__u16 pad;
};

struct slot_key {
	struct frontend_key frontend;
	__u16 slot;
	__u16 pad;
};

struct slot_value {
	__u32 backend_id;
};

struct backend_key {
	__u32 backend_id;
};

struct backend_value {
	__u8  ip[16];
	__u16 port;   /* network order */
	__u8  proto;
	__u8  family;
	__u16 cluster_id;
	__u8  flags;  /* BACKEND_F_* */
	__u8  pad;
};

struct policy_key {
	__u32 endpoint_id;
	__u32 remote_identity; /* ID_ANY: any */
	__u16 dport;           /* network order; 0: any port */
	__u8  proto;           /* 0: any protocol */
	__u8  direction;       /* DIR_* */
};

struct policy_value {
	__u8  verdict;
	__u8  pad[7];
	__u64 packets;
	__u64 bytes;
};

struct enforce_key {
	__u32 endpoint_id;
	__u8  direction;
	__u8  pad[3];
};

struct enforce_value {
	__u8 enforced;
	__u8 pad[3];
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

struct endpoint_value {
	__u32 endpoint_id;
	__u32 sec_identity;
};

struct revnat_key {
	__u64 cookie;
	__u8  ip[16];
	__u16 port;
	__u8  family;
	__u8  pad[5];
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3];
};

struct ct_value {
	__u64 packets;
};

_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key");
_Static_assert(sizeof(struct ipcache_value) == 24, "ipcache_value");
_Static_assert(sizeof(struct frontend_key) == 20, "frontend_key");
_Static_assert(sizeof(struct service_value) == 8, "service_value");
_Static_assert(sizeof(struct slot_key) == 24, "slot_key");
_Static_assert(sizeof(struct backend_value) == 24, "backend_value");
_Static_assert(sizeof(struct policy_key) == 12, "policy_key");
_Static_assert(sizeof(struct policy_value) == 24, "policy_value");
_Static_assert(sizeof(struct enforce_key) == 8, "enforce_key");
_Static_assert(sizeof(struct counter_value) == 16, "counter_value");
_Static_assert(sizeof(struct endpoint_value) == 8, "endpoint_value");
_Static_assert(sizeof(struct revnat_key) == 32, "revnat_key");
_Static_assert(sizeof(struct ct_key) == 16, "ct_key");

/* Capacities must equal bpf.layouts.MAP_SPECS (the pinned maps already exist with them). */
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, ipcache, 512000, PIN_DIR "/ipcache", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct frontend_key, struct service_value, services, 65536, PIN_DIR "/services");
BPF_TABLE_PINNED("hash", struct slot_key, struct slot_value, svc_slots, 262144, PIN_DIR "/svc_slots");
BPF_TABLE_PINNED("hash", struct backend_key, struct backend_value, backends, 262144, PIN_DIR "/backends");
BPF_TABLE_PINNED("hash", struct policy_key, struct policy_value, policy, 262144, PIN_DIR "/policy");
BPF_TABLE_PINNED("hash", struct enforce_key, struct enforce_value, policy_enforce, 16384, PIN_DIR "/policy_enforce");
BPF_TABLE_PINNED("percpu_array", __u32, struct counter_value, counters, 2 * REASON_SLOTS, PIN_DIR "/counters");
BPF_TABLE_PINNED("hash", __u32, struct endpoint_value, endpoints, 16384, PIN_DIR "/endpoints");
BPF_TABLE_PINNED("lru_hash", struct revnat_key, struct frontend_key, sock_revnat, 262144, PIN_DIR "/sock_revnat");
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, ct, 262144, PIN_DIR "/ct");

#endif /* CLUSTERMESH_COMMON_H */
