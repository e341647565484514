// glibc's allocator, as TypeScript asks (ts/native/memory.ts): malloc_trim hands the free pages
// of every arena back to the kernel; mallinfo2 says how much is in use and free. When is decided
// in TypeScript (ts/proxy/memory.ts).
#include "addon.h"

#include <malloc.h>

namespace inpod {

// mallocTrim(pad) -> 1 if memory was released, 0 if none could be.
static Napi::Value MallocTrim(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), malloc_trim(static_cast<size_t>(U32Arg(info, 0))));
}

// mallinfo2() -> {arena, hblkhd, uordblks, fordblks, keepcost}: bytes from sbrk, in mmapped
// chunks, in use, free in the arenas, releasable at the top of the main heap.
static Napi::Value Mallinfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  struct mallinfo2 m = mallinfo2();
  Napi::Object o = Napi::Object::New(env);
  o.Set("arena", Napi::Number::New(env, static_cast<double>(m.arena)));
  o.Set("hblkhd", Napi::Number::New(env, static_cast<double>(m.hblkhd)));
  o.Set("uordblks", Napi::Number::New(env, static_cast<double>(m.uordblks)));
  o.Set("fordblks", Napi::Number::New(env, static_cast<double>(m.fordblks)));
  o.Set("keepcost", Napi::Number::New(env, static_cast<double>(m.keepcost)));
  return o;
}

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim));
  exports.Set("mallinfo", Napi::Function::New(env, Mallinfo));
}

}  // namespace inpod
