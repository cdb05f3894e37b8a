/*
 * The ofi transport's C side: libfabric's data-path calls are static inline functions in its
 * headers, so Rust reaches them through these small wrappers (engine/src/fabric/ofi/sys.rs
 * declares them). Each wrapper does one libfabric call, or one fixed sequence of set-up calls,
 * and returns libfabric's own result (0 or a count on success, a negative FI_E* code on
 * failure). No wrapper keeps state of its own beyond the handles in `struct acre_ofi`.
 */
#include <rdma/fabric.h>
#include <rdma/fi_atomic.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
 * libfabric loads libinfinipath (for its psm provider), whose load-time constructor installs
 * handlers for crash signals unless IPATH_NO_BACKTRACE is set: they print a backtrace, write a
 * `.btr` file into the working directory and exit with status 1, so an abort (Acre's panics
 * abort in release builds) would no longer look like one to whoever waits for the process.
 * The executable's constructors run after its libraries' and before Rust's runtime installs its
 * own handlers, so this one puts the default dispositions back in between.
 */
__attribute__((constructor)) static void acre_ofi_restore_crash_signals(void)
{
	static const int signals[] = { SIGABRT, SIGBUS, SIGFPE, SIGILL, SIGSEGV };
	size_t i;
	for (i = 0; i < sizeof signals / sizeof signals[0]; i++)
		signal(signals[i], SIG_DFL);
}

/* Two endpoints per node in one domain: 0 is the target side (its NIC thread serves messages
 * and, on providers with manual progress, drives incoming READ/WRITE/CAS), 1 the initiator
 * side (the node's own operations on others). Each has its own completion queue. */
#define ACRE_OFI_ENDPOINTS 2

struct acre_ofi {
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_av *av;
	struct fid_ep *ep[ACRE_OFI_ENDPOINTS];
	struct fid_cq *cq[ACRE_OFI_ENDPOINTS];
};

/* What the chosen provider offers, as the Rust side needs to know it. */
struct acre_ofi_caps {
	int atomic_cas;         /* fi_compare_atomic on 64-bit words works */
	int ordered;            /* RMA and sends of one endpoint are placed in posting order */
	int virt_addr;          /* remote addresses are virtual addresses, not offsets */
	int cq_wait;            /* the completion queues have a wait object (fi_cq_sread) */
	int manual_progress;    /* data progress only happens inside libfabric calls */
	uint64_t inject_bytes;  /* largest message fi_tinject takes */
	int ordered_but_war;    /* as ordered, except a write after a read (tcp;ofi_rxm) */
};

/* Closes the endpoints, then their completion queues: after this nothing of the provider's
 * moves data into or out of this node's memory any more (a provider with progress threads of
 * its own stops them for these endpoints), so registrations and the memory behind them may go.
 * Idempotent; acre_ofi_close does it first too. */
void acre_ofi_close_endpoints(struct acre_ofi *o)
{
	int i;
	for (i = 0; i < ACRE_OFI_ENDPOINTS; i++) {
		if (o->ep[i])
			fi_close(&o->ep[i]->fid);
		o->ep[i] = NULL;
	}
	for (i = 0; i < ACRE_OFI_ENDPOINTS; i++) {
		if (o->cq[i])
			fi_close(&o->cq[i]->fid);
		o->cq[i] = NULL;
	}
}

void acre_ofi_close(struct acre_ofi *o)
{
	if (!o)
		return;
	acre_ofi_close_endpoints(o);
	if (o->av)
		fi_close(&o->av->fid);
	if (o->domain)
		fi_close(&o->domain->fid);
	if (o->fabric)
		fi_close(&o->fabric->fid);
	if (o->info)
		fi_freeinfo(o->info);
	free(o);
}

static int get_info(const char *provider, const char *node, uint64_t atomic, struct fi_info **out)
{
	struct fi_info *hints = fi_allocinfo();
	int ret;
	if (!hints)
		return -FI_ENOMEM;
	hints->caps = FI_MSG | FI_TAGGED | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ |
		      FI_REMOTE_WRITE | FI_SEND | FI_RECV | atomic;
	/* No FI_CONTEXT / FI_CONTEXT2: a message posts its receive and its send with one context,
	 * which a provider that keeps per-operation state in the context would corrupt; such
	 * providers are refused rather than served. */
	hints->mode = 0;
	hints->ep_attr->type = FI_EP_RDM;
	hints->domain_attr->threading = FI_THREAD_SAFE;
	hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
	hints->fabric_attr->prov_name = strdup(provider);
	ret = fi_getinfo(FI_VERSION(1, 9), node, NULL, FI_SOURCE, hints, out);
	fi_freeinfo(hints);
	return ret;
}

static int open_cq(struct acre_ofi *o, int index, int *cq_wait)
{
	struct fi_cq_attr attr;
	int ret;
	memset(&attr, 0, sizeof attr);
	attr.format = FI_CQ_FORMAT_TAGGED;
	attr.wait_obj = FI_WAIT_UNSPEC;
	ret = fi_cq_open(o->domain, &attr, &o->cq[index], NULL);
	if (ret == 0)
		return 0;
	/* No wait object: the Rust side sleeps between polls instead. */
	*cq_wait = 0;
	attr.wait_obj = FI_WAIT_NONE;
	return fi_cq_open(o->domain, &attr, &o->cq[index], NULL);
}

/*
 * Opens `provider` on `node` (a local address: the endpoints listen there): fabric, domain,
 * address vector, two endpoints with a completion queue each. On failure returns the negative
 * FI_E* code, stores the name of the call that failed in `failed_call`, and leaves nothing open.
 */
int acre_ofi_open(const char *provider, const char *node, struct acre_ofi **out,
		  struct acre_ofi_caps *caps, const char **failed_call)
{
	struct acre_ofi *o = calloc(1, sizeof *o);
	struct fi_av_attr av_attr;
	uint64_t want;
	int i, ret;
	if (!o)
		return -FI_ENOMEM;
	memset(caps, 0, sizeof *caps);
	caps->atomic_cas = 1;
	caps->cq_wait = 1;
	*failed_call = "fi_getinfo";
	ret = get_info(provider, node, FI_ATOMIC, &o->info);
	if (ret == -FI_ENODATA) {
		caps->atomic_cas = 0;
		ret = get_info(provider, node, 0, &o->info);
	}
	if (ret)
		goto fail;
	if (o->info->domain_attr->mr_mode & FI_MR_LOCAL) {
		*failed_call = "fi_getinfo (the provider needs FI_MR_LOCAL)";
		ret = -FI_ENOSYS;
		goto fail;
	}
	caps->virt_addr = (o->info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
	caps->manual_progress = o->info->domain_attr->data_progress == FI_PROGRESS_MANUAL;
	caps->inject_bytes = o->info->tx_attr->inject_size;
	want = FI_ORDER_RAR | FI_ORDER_RAW | FI_ORDER_WAR | FI_ORDER_WAW | FI_ORDER_SAR |
	       FI_ORDER_SAW;
	caps->ordered = (o->info->tx_attr->msg_order & want) == want &&
			o->info->ep_attr->max_order_raw_size >= (8u << 20) &&
			o->info->ep_attr->max_order_war_size >= (8u << 20) &&
			o->info->ep_attr->max_order_waw_size >= (8u << 20);
	want &= ~(uint64_t)FI_ORDER_WAR;
	caps->ordered_but_war = (o->info->tx_attr->msg_order & want) == want &&
				o->info->ep_attr->max_order_raw_size >= (8u << 20) &&
				o->info->ep_attr->max_order_waw_size >= (8u << 20);
	*failed_call = "fi_fabric";
	if ((ret = fi_fabric(o->info->fabric_attr, &o->fabric, NULL)))
		goto fail;
	*failed_call = "fi_domain";
	if ((ret = fi_domain(o->fabric, o->info, &o->domain, NULL)))
		goto fail;
	memset(&av_attr, 0, sizeof av_attr);
	av_attr.type = o->info->domain_attr->av_type == FI_AV_UNSPEC ? FI_AV_TABLE
								  : o->info->domain_attr->av_type;
	*failed_call = "fi_av_open";
	if ((ret = fi_av_open(o->domain, &av_attr, &o->av, NULL)))
		goto fail;
	for (i = 0; i < ACRE_OFI_ENDPOINTS; i++) {
		*failed_call = "fi_cq_open";
		if ((ret = open_cq(o, i, &caps->cq_wait)))
			goto fail;
		*failed_call = "fi_endpoint";
		if ((ret = fi_endpoint(o->domain, o->info, &o->ep[i], NULL)))
			goto fail;
		*failed_call = "fi_ep_bind (address vector)";
		if ((ret = fi_ep_bind(o->ep[i], &o->av->fid, 0)))
			goto fail;
		*failed_call = "fi_ep_bind (completion queue)";
		if ((ret = fi_ep_bind(o->ep[i], &o->cq[i]->fid, FI_TRANSMIT | FI_RECV)))
			goto fail;
		*failed_call = "fi_enable";
		if ((ret = fi_enable(o->ep[i])))
			goto fail;
	}
	if (caps->atomic_cas) {
		size_t count = 0;
		caps->atomic_cas =
			fi_compare_atomicvalid(o->ep[1], FI_UINT64, FI_CSWAP, &count) == 0 &&
			count >= 1;
	}
	*failed_call = "";
	*out = o;
	return 0;
fail:
	acre_ofi_close(o);
	return ret;
}

/* The name other nodes insert into their address vectors to reach endpoint `which`. */
int acre_ofi_ep_name(struct acre_ofi *o, int which, void *buf, size_t *len)
{
	return fi_getname(&o->ep[which]->fid, buf, len);
}

int acre_ofi_av_insert(struct acre_ofi *o, const void *name, uint64_t *fi_addr)
{
	fi_addr_t addr = FI_ADDR_UNSPEC;
	int ret = fi_av_insert(o->av, name, 1, &addr, 0, NULL);
	*fi_addr = addr;
	return ret == 1 ? 0 : (ret < 0 ? ret : -FI_EINVAL);
}

/* Registers [base, base + len) for remote READ, and for remote WRITE and atomics too when
 * `writable`. */
int acre_ofi_mr_reg(struct acre_ofi *o, void *base, size_t len, int writable,
		    uint64_t requested_key, struct fid_mr **mr, uint64_t *key)
{
	uint64_t access = FI_REMOTE_READ | (writable ? FI_REMOTE_WRITE : 0);
	int ret = fi_mr_reg(o->domain, base, len, access, 0, requested_key, 0, mr, NULL);
	if (ret == 0)
		*key = fi_mr_key(*mr);
	return ret;
}

int acre_ofi_mr_close(struct fid_mr *mr)
{
	return fi_close(&mr->fid);
}

ssize_t acre_ofi_read(struct acre_ofi *o, void *buf, size_t len, uint64_t dest, uint64_t addr,
		      uint64_t key, void *context, int more)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct fi_rma_iov rma = { .addr = addr, .len = len, .key = key };
	struct fi_msg_rma msg = { .msg_iov = &iov, .desc = NULL, .iov_count = 1, .addr = dest,
				  .rma_iov = &rma, .rma_iov_count = 1, .context = context };
	return fi_readmsg(o->ep[1], &msg, FI_COMPLETION | (more ? FI_MORE : 0));
}

ssize_t acre_ofi_write(struct acre_ofi *o, const void *buf, size_t len, uint64_t dest,
		       uint64_t addr, uint64_t key, void *context, int more)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct fi_rma_iov rma = { .addr = addr, .len = len, .key = key };
	struct fi_msg_rma msg = { .msg_iov = &iov, .desc = NULL, .iov_count = 1, .addr = dest,
				  .rma_iov = &rma, .rma_iov_count = 1, .context = context };
	return fi_writemsg(o->ep[1], &msg,
			   FI_COMPLETION | FI_DELIVERY_COMPLETE | (more ? FI_MORE : 0));
}

/* words[0] = the new value, words[1] = the expected one, words[2] receives the previous one. */
ssize_t acre_ofi_cas(struct acre_ofi *o, uint64_t *words, uint64_t dest, uint64_t addr,
		     uint64_t key, void *context)
{
	return fi_compare_atomic(o->ep[1], &words[0], 1, NULL, &words[1], NULL, &words[2], NULL,
				 dest, addr, key, FI_UINT64, FI_CSWAP, context);
}

ssize_t acre_ofi_tsend(struct acre_ofi *o, int which, const void *buf, size_t len,
		       uint64_t dest, uint64_t tag, void *context)
{
	return fi_tsend(o->ep[which], buf, len, NULL, dest, tag, context);
}

ssize_t acre_ofi_trecv(struct acre_ofi *o, int which, void *buf, size_t len, uint64_t tag,
		       uint64_t ignore, void *context)
{
	return fi_trecv(o->ep[which], buf, len, NULL, FI_ADDR_UNSPEC, tag, ignore, context);
}

/* Withdraws the operations posted on endpoint `which` with `context` that the provider can
 * still withdraw (posted receives): each completes with FI_ECANCELED. */
int acre_ofi_cancel(struct acre_ofi *o, int which, void *context)
{
	return (int)fi_cancel(&o->ep[which]->fid, context);
}

ssize_t acre_ofi_cq_read(struct acre_ofi *o, int which, struct fi_cq_tagged_entry *entries,
			 size_t count)
{
	return fi_cq_read(o->cq[which], entries, count);
}

ssize_t acre_ofi_cq_sread(struct acre_ofi *o, int which, struct fi_cq_tagged_entry *entries,
			  size_t count, int timeout_ms)
{
	return fi_cq_sread(o->cq[which], entries, count, NULL, timeout_ms);
}

/* The next error completion: its context, its FI_E* code, and the provider's words for it. */
ssize_t acre_ofi_cq_readerr(struct acre_ofi *o, int which, void **context, int *err,
			    char *message, size_t message_len)
{
	struct fi_cq_err_entry entry;
	const char *text;
	ssize_t ret;
	memset(&entry, 0, sizeof entry);
	ret = fi_cq_readerr(o->cq[which], &entry, 0);
	if (ret < 0)
		return ret;
	*context = entry.op_context;
	*err = entry.err;
	text = fi_cq_strerror(o->cq[which], entry.prov_errno, entry.err_data, NULL, 0);
	if (message_len > 0) {
		strncpy(message, text ? text : "", message_len - 1);
		message[message_len - 1] = '\0';
	}
	return ret;
}

int acre_ofi_cq_signal(struct acre_ofi *o, int which)
{
	return fi_cq_signal(o->cq[which]);
}

const char *acre_ofi_strerror(int code)
{
	return fi_strerror(code);
}

/* The provider's name as libfabric spells it. */
const char *acre_ofi_provider_name(struct acre_ofi *o)
{
	return o->info->fabric_attr->prov_name;
}

/* The layout the Rust side declares for `struct fi_cq_tagged_entry`. */
size_t acre_ofi_cq_entry_bytes(void)
{
	return sizeof(struct fi_cq_tagged_entry);
}
