// libbpf and bpf(2) wrappers: skeleton open/load, program and map fds, links, pins, map ops.
#include "addon.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <cstdarg>
#include <cstring>
#include <vector>

extern "C" {
#include "types.h"
#include "connect.skel.h"
#include "fastpath.skel.h"
#include "getsockopt.skel.h"
#include "sk_lookup.skel.h"
#include "sockops.skel.h"
}

namespace inpod {

// libbpf's own messages (verifier log included) are kept for the caller to show on failure.
static std::string g_log;
static int PrintFn(enum libbpf_print_level level, const char *fmt, va_list ap) {
  if (level == LIBBPF_DEBUG) return 0;
  char *msg = nullptr;
  int n = vasprintf(&msg, fmt, ap);
  if (n > 0) {
    g_log.append(msg, n);
    if (g_log.size() > 256 * 1024) g_log.erase(0, g_log.size() - 256 * 1024);  // keep the end
  }
  free(msg);
  return 0;
}

// One entry per skeleton generated from bpf/*.bpf.c; every skeleton carries the same rodata.
struct SkelOps {
  const char *name;
  void *(*open)(const struct bpf_object_open_opts *);
  void (*destroy)(void *);
  struct bpf_object *(*obj)(void *);
  struct inpod_config *(*cfg)(void *);
};

#define SKEL(n)                                                                                 \
  {#n, [](const struct bpf_object_open_opts *o) -> void * { return inpod_##n##__open_opts(o); }, \
   [](void *s) { inpod_##n##__destroy(static_cast<struct inpod_##n *>(s)); },                   \
   [](void *s) { return static_cast<struct inpod_##n *>(s)->obj; },                              \
   [](void *s) { return &static_cast<struct inpod_##n *>(s)->rodata->inpod_cfg; }}

// The fast path's object has no capture settings (and pins nothing).
#define SKEL_NOCFG(n)                                                                           \
  {#n, [](const struct bpf_object_open_opts *o) -> void * { return inpod_##n##__open_opts(o); }, \
   [](void *s) { inpod_##n##__destroy(static_cast<struct inpod_##n *>(s)); },                   \
   [](void *s) { return static_cast<struct inpod_##n *>(s)->obj; },                              \
   [](void *) -> struct inpod_config * { return nullptr; }}

static const SkelOps kSkels[] = {SKEL(connect), SKEL(sockops), SKEL(sk_lookup), SKEL(getsockopt), SKEL_NOCFG(fastpath)};

struct Skel {
  const SkelOps *ops;
  void *skel;
};

static Skel *GetSkel(const Napi::CallbackInfo &info) { return info[0].As<Napi::External<Skel>>().Data(); }

// skelOpen(name, pinRoot) -> External | -errno. Maps are pinned by name under pinRoot.
static Napi::Value SkelOpen(const Napi::CallbackInfo &info) {
  std::string name = StrArg(info, 0), pinRoot = StrArg(info, 1);
  const SkelOps *ops = nullptr;
  for (const auto &s : kSkels)
    if (name == s.name) ops = &s;
  if (!ops) return Errno(info.Env(), ENOENT);
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pinRoot.c_str());
  g_log.clear();
  void *skel = ops->open(&opts);
  int err = errno;
  if (!skel) return Errno(info.Env(), err);
  return Napi::External<Skel>::New(info.Env(), new Skel{ops, skel});
}

// skelSetConfig(h, Buffer) -> 0 | -EINVAL. Only before load.
static Napi::Value SkelSetConfig(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  struct inpod_config *cfg = s->ops->cfg(s->skel);
  if (!cfg || buf.Length() != sizeof(struct inpod_config)) return Errno(info.Env(), EINVAL);
  memcpy(cfg, buf.Data(), sizeof(struct inpod_config));
  return Napi::Number::New(info.Env(), 0);
}

// skelAutoload(h, progName, bool) -> 0 | -errno: load only the programs the caller needs.
static Napi::Value SkelAutoload(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  auto *p = bpf_object__find_program_by_name(s->ops->obj(s->skel), StrArg(info, 1).c_str());
  if (!p) return Errno(info.Env(), ENOENT);
  return Napi::Number::New(info.Env(), bpf_program__set_autoload(p, info[2].As<Napi::Boolean>()));
}

static Napi::Value SkelLoad(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  g_log.clear();
  int err = bpf_object__load(s->ops->obj(s->skel));
  return Napi::Number::New(info.Env(), err);  // libbpf returns -errno
}

// skelProg(h, name) -> {fd, attachType} | -errno
static Napi::Value SkelProg(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  auto *p = bpf_object__find_program_by_name(s->ops->obj(s->skel), StrArg(info, 1).c_str());
  if (!p) return Errno(info.Env(), ENOENT);
  int fd = bpf_program__fd(p);
  if (fd < 0) return Errno(info.Env(), -fd);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("fd", fd);
  o.Set("attachType", static_cast<int>(bpf_program__expected_attach_type(p)));
  return o;
}

// skelMap(h, name) -> fd | -errno
static Napi::Value SkelMap(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  auto *m = bpf_object__find_map_by_name(s->ops->obj(s->skel), StrArg(info, 1).c_str());
  if (!m) return Errno(info.Env(), ENOENT);
  int fd = bpf_map__fd(m);
  return Napi::Number::New(info.Env(), fd < 0 ? -EBADF : fd);
}

// skelDestroy(h): closes the object's own fds; pinned maps and links stay.
static Napi::Value SkelDestroy(const Napi::CallbackInfo &info) {
  Skel *s = GetSkel(info);
  if (s->skel) s->ops->destroy(s->skel);
  s->skel = nullptr;
  return info.Env().Undefined();
}

static Napi::Value LibbpfLog(const Napi::CallbackInfo &info) { return Napi::String::New(info.Env(), g_log); }

static Napi::Value ObjPin(const Napi::CallbackInfo &info) {
  int r = bpf_obj_pin(IntArg(info, 0), StrArg(info, 1).c_str());
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value ObjGet(const Napi::CallbackInfo &info) {
  int fd = bpf_obj_get(StrArg(info, 0).c_str());
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// linkCreate(progFd, targetFd, attachType) -> link fd | -errno
static Napi::Value LinkCreate(const Napi::CallbackInfo &info) {
  int fd = bpf_link_create(IntArg(info, 0), IntArg(info, 1), static_cast<enum bpf_attach_type>(IntArg(info, 2)), nullptr);
  return Napi::Number::New(info.Env(), fd < 0 ? -errno : fd);
}

// linkUpdate(linkFd, progFd): swap the program behind a live link (upgrade without a gap).
// progAttach(progFd, targetFd, attachType) -> 0 | -errno: the pre-link attach (a stream
// verdict program onto a SOCKHASH); it lasts as long as the map.
static Napi::Value ProgAttach(const Napi::CallbackInfo &info) {
  int r = bpf_prog_attach(IntArg(info, 0), IntArg(info, 1), static_cast<enum bpf_attach_type>(IntArg(info, 2)), 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value LinkUpdate(const Napi::CallbackInfo &info) {
  int r = bpf_link_update(IntArg(info, 0), IntArg(info, 1), nullptr);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

static Napi::Value LinkDetach(const Napi::CallbackInfo &info) {
  int r = bpf_link_detach(IntArg(info, 0));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// linkInfo(fd) -> {id, progId, type, attachType, netnsIno, cgroupId} | -errno
static Napi::Value LinkInfo(const Napi::CallbackInfo &info) {
  struct bpf_link_info li;
  __u32 len = sizeof(li);
  memset(&li, 0, sizeof(li));
  if (bpf_obj_get_info_by_fd(IntArg(info, 0), &li, &len) < 0) return Errno(info.Env(), errno);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("id", li.id);
  o.Set("progId", li.prog_id);
  o.Set("type", li.type);
  if (li.type == BPF_LINK_TYPE_NETNS) {
    o.Set("attachType", li.netns.attach_type);
    o.Set("netnsIno", li.netns.netns_ino);
  } else if (li.type == BPF_LINK_TYPE_CGROUP) {
    o.Set("attachType", li.cgroup.attach_type);
    o.Set("cgroupId", Napi::BigInt::New(info.Env(), static_cast<uint64_t>(li.cgroup.cgroup_id)));
  }
  return o;
}

// progId(fd) -> id | -errno
static Napi::Value ProgId(const Napi::CallbackInfo &info) {
  struct bpf_prog_info pi;
  __u32 len = sizeof(pi);
  memset(&pi, 0, sizeof(pi));
  if (bpf_obj_get_info_by_fd(IntArg(info, 0), &pi, &len) < 0) return Errno(info.Env(), errno);
  return Napi::Number::New(info.Env(), pi.id);
}

// mapUpdate(fd, key, value, flags) -> 0 | -errno
static Napi::Value MapUpdate(const Napi::CallbackInfo &info) {
  auto k = info[1].As<Napi::Buffer<uint8_t>>(), v = info[2].As<Napi::Buffer<uint8_t>>();
  int r = bpf_map_update_elem(IntArg(info, 0), k.Data(), v.Data(), U32Arg(info, 3));
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// mapLookup(fd, key, valueSize) -> Buffer | -errno
static Napi::Value MapLookup(const Napi::CallbackInfo &info) {
  auto k = info[1].As<Napi::Buffer<uint8_t>>();
  auto v = Napi::Buffer<uint8_t>::New(info.Env(), U32Arg(info, 2));
  memset(v.Data(), 0, v.Length());
  if (bpf_map_lookup_elem(IntArg(info, 0), k.Data(), v.Data()) < 0) return Errno(info.Env(), errno);
  return v;
}

static Napi::Value MapDelete(const Napi::CallbackInfo &info) {
  auto k = info[1].As<Napi::Buffer<uint8_t>>();
  int r = bpf_map_delete_elem(IntArg(info, 0), k.Data());
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// mapNextKey(fd, key | null, keySize) -> Buffer | -errno (-ENOENT at the end)
static Napi::Value MapNextKey(const Napi::CallbackInfo &info) {
  auto next = Napi::Buffer<uint8_t>::New(info.Env(), U32Arg(info, 2));
  const void *cur = info[1].IsNull() ? nullptr : info[1].As<Napi::Buffer<uint8_t>>().Data();
  if (bpf_map_get_next_key(IntArg(info, 0), cur, next.Data()) < 0) return Errno(info.Env(), errno);
  return next;
}

static Napi::Value NumPossibleCpus(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), libbpf_num_possible_cpus());
}

// probeProgType(type) -> 1 supported, 0 not, -errno
static Napi::Value ProbeProgType(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), libbpf_probe_bpf_prog_type(static_cast<enum bpf_prog_type>(IntArg(info, 0)), nullptr));
}

// probeHelper(progType, helperId) -> 1 | 0 | -errno
static Napi::Value ProbeHelper(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), libbpf_probe_bpf_helper(static_cast<enum bpf_prog_type>(IntArg(info, 0)),
                                                               static_cast<enum bpf_func_id>(IntArg(info, 1)), nullptr));
}

void InitBpf(Napi::Env env, Napi::Object exports) {
  libbpf_set_print(PrintFn);
  exports.Set("skelOpen", Napi::Function::New(env, SkelOpen));
  exports.Set("skelSetConfig", Napi::Function::New(env, SkelSetConfig));
  exports.Set("skelAutoload", Napi::Function::New(env, SkelAutoload));
  exports.Set("skelLoad", Napi::Function::New(env, SkelLoad));
  exports.Set("skelProg", Napi::Function::New(env, SkelProg));
  exports.Set("skelMap", Napi::Function::New(env, SkelMap));
  exports.Set("skelDestroy", Napi::Function::New(env, SkelDestroy));
  exports.Set("libbpfLog", Napi::Function::New(env, LibbpfLog));
  exports.Set("objPin", Napi::Function::New(env, ObjPin));
  exports.Set("objGet", Napi::Function::New(env, ObjGet));
  exports.Set("linkCreate", Napi::Function::New(env, LinkCreate));
  exports.Set("progAttach", Napi::Function::New(env, ProgAttach));
  exports.Set("linkUpdate", Napi::Function::New(env, LinkUpdate));
  exports.Set("linkDetach", Napi::Function::New(env, LinkDetach));
  exports.Set("linkInfo", Napi::Function::New(env, LinkInfo));
  exports.Set("progId", Napi::Function::New(env, ProgId));
  exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate));
  exports.Set("mapLookup", Napi::Function::New(env, MapLookup));
  exports.Set("mapDelete", Napi::Function::New(env, MapDelete));
  exports.Set("mapNextKey", Napi::Function::New(env, MapNextKey));
  exports.Set("numPossibleCpus", Napi::Function::New(env, NumPossibleCpus));
  exports.Set("probeProgType", Napi::Function::New(env, ProbeProgType));
  exports.Set("probeHelper", Napi::Function::New(env, ProbeHelper));
}

}  // namespace inpod
