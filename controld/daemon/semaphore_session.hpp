#pragma once
// The daemon's side of the Semaphore driver: one SemaphoreClient for every
// service, replaced when a reload changes the connection settings (drivers
// still finishing an operation keep the client they started with).

#include <uv.h>

#include <memory>

#include "controld/config/config.hpp"
#include "controld/io/http_client.hpp"

namespace ondemand::controld {

class SemaphoreClient;

class SemaphoreSession {
 public:
  SemaphoreSession(uv_loop_t* loop, HttpClient& http) : loop_(loop), http_(http) {}

  // The client for these settings: the current one while its connection
  // settings (URL up to trailing slashes, project, credentials, timeout) are
  // the same, else a new one.
  std::shared_ptr<SemaphoreClient> client(const SemaphoreSettings& settings);
  // Drops this session's hold on the client (drivers may keep theirs).
  void reset() { client_.reset(); }

 private:
  uv_loop_t* loop_;
  HttpClient& http_;
  std::shared_ptr<SemaphoreClient> client_;
};

}  // namespace ondemand::controld
