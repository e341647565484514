{
  "targets": [
    {
      "target_name": "inpod_native",
      "sources": ["src/addon.cc", "src/bpf.cc", "src/tcp.cc", "src/unix.cc", "src/netns.cc", "src/epoll.cc", "src/memory.cc",
                  "src/hbone_tls.cc", "src/hbone_session.cc", "src/hbone_engine.cc",
                  "src/hbone_relay.cc", "src/hbone_napi.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "../bpf/include",
        "../build"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wno-missing-field-initializers"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
