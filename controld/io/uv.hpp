#pragma once
// Small RAII owners for libuv handles. libuv closes handles asynchronously, so
// each owner heap-allocates its handle and frees it in the close callback; the
// owner itself can go away at any time and no callback runs after that.

#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <utility>

namespace ondemand::controld {

template <typename Handle>
class UvHandle {
 public:
  UvHandle() = default;
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  UvHandle(UvHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  UvHandle& operator=(UvHandle&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~UvHandle() { reset(); }

  // Takes a freshly initialised handle allocated with new.
  void adopt(Handle* h) {
    reset();
    handle_ = h;
  }
  Handle* get() const { return handle_; }
  explicit operator bool() const { return handle_ != nullptr; }

  void reset() {
    if (!handle_) return;
    auto* h = reinterpret_cast<uv_handle_t*>(std::exchange(handle_, nullptr));
    h->data = nullptr;
    if (!uv_is_closing(h)) uv_close(h, [](uv_handle_t* closed) { delete reinterpret_cast<Handle*>(closed); });
  }

 private:
  Handle* handle_ = nullptr;
};

// A one-shot or repeating timer whose callback never outlives the owner.
class Timer {
 public:
  explicit Timer(uv_loop_t* loop) {
    auto* t = new uv_timer_t;
    uv_timer_init(loop, t);
    t->data = this;
    handle_.adopt(t);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  void start(std::chrono::milliseconds after, std::function<void()> callback) {
    callback_ = std::move(callback);
    const auto ms = after.count() < 0 ? 0 : static_cast<std::uint64_t>(after.count());
    uv_timer_start(
        handle_.get(),
        [](uv_timer_t* t) {
          if (auto* self = static_cast<Timer*>(t->data)) {
            auto cb = self->callback_;  // the callback may restart or destroy the timer
            cb();
          }
        },
        ms, 0);
  }
  void stop() { uv_timer_stop(handle_.get()); }
  bool active() const { return uv_is_active(reinterpret_cast<uv_handle_t*>(handle_.get())) != 0; }

 private:
  UvHandle<uv_timer_t> handle_;
  std::function<void()> callback_;
};

// Tears a loop down: lets pending close callbacks run, closes every handle
// still open, runs the loop until they are gone and closes it. True when
// uv_loop_close succeeded.
inline bool closeLoop(uv_loop_t* loop) {
  uv_run(loop, UV_RUN_NOWAIT);
  uv_walk(
      loop,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(loop, UV_RUN_DEFAULT);
  return uv_loop_close(loop) == 0;
}

// Wall clock in unix milliseconds, for timestamps that are shown and persisted.
inline std::int64_t unixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace ondemand::controld
