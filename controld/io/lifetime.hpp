#pragma once
// "Is my owner still there?" for callbacks that may run after the object that
// asked for them is gone (a transfer finishing at shutdown), or that destroy
// it themselves (a callback that removes the service). The owner holds a
// Lifetime and gives each callback a token(); the callback asks alive()
// before it touches the owner. The owner's destructor calls end() first, so
// that what it does next (cancelling, closing) calls back into nothing.

#include <memory>

namespace ondemand::controld {

class Lifetime {
 public:
  class Token {
   public:
    bool alive() const { return !flag_.expired(); }

   private:
    friend class Lifetime;
    explicit Token(std::weak_ptr<const char> flag) : flag_(std::move(flag)) {}
    std::weak_ptr<const char> flag_;
  };

  Lifetime() = default;
  Lifetime(const Lifetime&) = delete;
  Lifetime& operator=(const Lifetime&) = delete;

  Token token() const { return Token(flag_); }
  // Every token says "gone" from now on (also done by the destructor).
  void end() { flag_.reset(); }

 private:
  std::shared_ptr<const char> flag_ = std::make_shared<const char>('\0');
};

}  // namespace ondemand::controld
