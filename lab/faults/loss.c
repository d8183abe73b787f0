// Lab packet loss: a tc ingress program on bridge ports of the lab's underlay.
//
// `pairs` holds (source MAC, destination MAC) pairs of the node sets of one loss fault, both
// directions; a frame of such a pair is dropped when a fresh random 32-bit number is below the
// pair's threshold (percent / 100 * 2^32). Every other frame goes on to the next filter
// (TC_ACT_UNSPEC), so several loss faults stack on one port. `side` and `percent_e6` are read
// back by userspace only (which side the source is on; the percentage times 10^6).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

struct pair {
    u8 src[ETH_ALEN];
    u8 dst[ETH_ALEN];
};

struct verdict {
    u64 threshold;
    u32 side;
    u32 percent_e6;
};

BPF_HASH(pairs, struct pair, struct verdict, MAX_PAIRS);

int lab_loss(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_UNSPEC;
    struct pair key = {};
    __builtin_memcpy(key.src, eth->h_source, ETH_ALEN);
    __builtin_memcpy(key.dst, eth->h_dest, ETH_ALEN);
    struct verdict *v = pairs.lookup(&key);
    if (!v)
        return TC_ACT_UNSPEC;
    if ((u64)bpf_get_prandom_u32() < v->threshold)
        return TC_ACT_SHOT;
    return TC_ACT_UNSPEC;
}
