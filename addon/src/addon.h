// Thin native layer: each export parses its arguments, makes one syscall or libbpf call, saves
// errno at once and returns -errno or the result. Decisions live in TypeScript (ts/native/).
#pragma once
#include <napi.h>
#include <cerrno>
#include <string>

namespace inpod {

inline Napi::Value Errno(Napi::Env env, int err) { return Napi::Number::New(env, -(err > 0 ? err : EINVAL)); }

// A composite call (setns + socket + bind + ...) reports which step failed.
inline Napi::Value SysFail(Napi::Env env, const char *syscall, int err) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("errno", err);
  o.Set("syscall", syscall);
  return o;
}

// The failed step of a composite call, recorded where no N-API call may happen (inside a
// NetnsGuard) and reported with SysFail after it. err == 0: no step failed.
struct Step {
  const char *syscall = "";
  int err = 0;
  // Records `what` with the current errno; returns false so a caller can `return s.Fail(...)`.
  bool Fail(const char *what) { return Fail(what, errno); }
  bool Fail(const char *what, int e) {
    syscall = what;
    err = e;
    return false;
  }
};

inline int IntArg(const Napi::CallbackInfo &info, size_t i) { return info[i].As<Napi::Number>().Int32Value(); }
inline uint32_t U32Arg(const Napi::CallbackInfo &info, size_t i) { return info[i].As<Napi::Number>().Uint32Value(); }
inline std::string StrArg(const Napi::CallbackInfo &info, size_t i) { return info[i].As<Napi::String>().Utf8Value(); }

void InitBpf(Napi::Env env, Napi::Object exports);
void InitTcp(Napi::Env env, Napi::Object exports);
void InitUnix(Napi::Env env, Napi::Object exports);
void InitNetns(Napi::Env env, Napi::Object exports);
void InitEpoll(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitHbone(Napi::Env env, Napi::Object exports);

}  // namespace inpod
