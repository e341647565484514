// The module's entry: registers every export (one file per concern: bpf.cc, epoll.cc, netns.cc,
// tcp.cc, unix.cc, memory.cc, hbone_*.cc) and the struct layouts shared with the eBPF programs (bpf/include/types.h).
#include "addon.h"

#include <cstddef>

extern "C" {
#include "types.h"
}

namespace inpod {

// Sizes are the contract with the eBPF programs; the TypeScript encoders are tested against
// the layout exported below (see test/native/structs.test.ts).
static_assert(sizeof(struct inpod_config) == 16, "inpod_config");
static_assert(sizeof(struct inpod_pod) == 16, "inpod_pod");
static_assert(sizeof(struct inpod_port_key) == 16, "inpod_port_key");
static_assert(sizeof(struct inpod_pod6) == 32, "inpod_pod6");
static_assert(sizeof(struct inpod_cidr_key) == 16, "inpod_cidr_key");
static_assert(sizeof(struct inpod_cidr6_key) == 28, "inpod_cidr6_key");
static_assert(sizeof(struct inpod_tuple) == 48, "inpod_tuple");
static_assert(sizeof(struct inpod_addr) == 20, "inpod_addr");
static_assert(sizeof(struct inpod_fp_flow) == 40, "inpod_fp_flow");
static_assert(sizeof(struct inpod_fp_config) == 8, "inpod_fp_config");

#define FIELD(obj, T, f) obj.Set(#f, Napi::Number::New(env, offsetof(T, f)))

static Napi::Object Struct(Napi::Env env, size_t size, Napi::Object fields) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("sizeof", Napi::Number::New(env, size));
  o.Set("offsetof", fields);
  return o;
}

static Napi::Value Layout(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Object f;

  f = Napi::Object::New(env);
  FIELD(f, inpod_config, proxy_mark); FIELD(f, inpod_config, spoof_mark); FIELD(f, inpod_config, outbound_port);
  FIELD(f, inpod_config, inbound_port); FIELD(f, inpod_config, hbone_port); FIELD(f, inpod_config, dns_port);
  out.Set("inpod_config", Struct(env, sizeof(inpod_config), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_pod, ip4); FIELD(f, inpod_pod, probe_ip4); FIELD(f, inpod_pod, flags);
  out.Set("inpod_pod", Struct(env, sizeof(inpod_pod), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_pod6, ip6); FIELD(f, inpod_pod6, probe_ip6);
  out.Set("inpod_pod6", Struct(env, sizeof(inpod_pod6), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_port_key, netns); FIELD(f, inpod_port_key, port); FIELD(f, inpod_port_key, dir);
  out.Set("inpod_port_key", Struct(env, sizeof(inpod_port_key), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_cidr_key, prefixlen); FIELD(f, inpod_cidr_key, netns); FIELD(f, inpod_cidr_key, addr);
  out.Set("inpod_cidr_key", Struct(env, sizeof(inpod_cidr_key), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_cidr6_key, prefixlen); FIELD(f, inpod_cidr6_key, netns); FIELD(f, inpod_cidr6_key, addr);
  out.Set("inpod_cidr6_key", Struct(env, sizeof(inpod_cidr6_key), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_tuple, netns); FIELD(f, inpod_tuple, sip); FIELD(f, inpod_tuple, dip);
  FIELD(f, inpod_tuple, sport); FIELD(f, inpod_tuple, dport);
  out.Set("inpod_tuple", Struct(env, sizeof(inpod_tuple), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_addr, ip); FIELD(f, inpod_addr, port);
  out.Set("inpod_addr", Struct(env, sizeof(inpod_addr), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_fp_flow, peer); FIELD(f, inpod_fp_flow, bytes); FIELD(f, inpod_fp_flow, segs);
  FIELD(f, inpod_fp_flow, peer_base); FIELD(f, inpod_fp_flow, throttled);
  out.Set("inpod_fp_flow", Struct(env, sizeof(inpod_fp_flow), f));

  f = Napi::Object::New(env);
  FIELD(f, inpod_fp_config, max_inflight);
  out.Set("inpod_fp_config", Struct(env, sizeof(inpod_fp_config), f));

  Napi::Object c = Napi::Object::New(env);
  c.Set("INPOD_POD_DNS_CAPTURE", INPOD_POD_DNS_CAPTURE);
  c.Set("INPOD_DIR_IN", INPOD_DIR_IN);
  c.Set("INPOD_DIR_OUT", INPOD_DIR_OUT);
  c.Set("INPOD_STAT_MAX", static_cast<int>(INPOD_STAT_MAX));
  c.Set("INPOD_FP_STAT_MAX", static_cast<int>(INPOD_FP_STAT_MAX));
  out.Set("constants", c);
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("layout", Napi::Function::New(env, Layout));
  InitBpf(env, exports);
  InitTcp(env, exports);
  InitUnix(env, exports);
  InitNetns(env, exports);
  InitEpoll(env, exports);
  InitMemory(env, exports);
  InitHbone(env, exports);
  return exports;
}

}  // namespace inpod

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return inpod::Init(env, exports); }

NODE_API_MODULE(inpod_native, InitModule)
