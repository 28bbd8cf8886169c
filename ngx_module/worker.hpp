#pragma once
// Everything one nginx worker process holds for the module: a ControlLink
// per controld endpoint in use, and the reactions to what controld pushes
// (release the parked requests of a service when it turns warm or failed,
// wake it again for requests still parked).

#include <memory>
#include <vector>

#include "ngx_module/conf.hpp"
#include "ngx_module/control_link.hpp"

namespace ondemand::module {

class Worker final : public ControlLink::Listener {
 public:
  // init_process / exit_process. Only worker processes (and the single
  // process without a master) get a Worker.
  static void start(ngx_cycle_t* cycle, MainConf* conf);
  static void stop();
  static Worker* current() { return current_; }

  ControlLink* link(ngx_uint_t endpoint) { return endpoint < links_.size() ? links_[endpoint].get() : nullptr; }

  // Every parked request of the service is looked at again (and then
  // passes, waits on, or gets its answer). They go on kReleaseBatch at a
  // time, one batch per turn of the event loop: with thousands held, the
  // first ones are answered while the others are still being resumed,
  // instead of all waiting until every one of them has been.
  void releaseParked(ServiceEntry& entry);

  static constexpr int kReleaseBatch = 16;

  void onStateChanged(ControlLink& link, ServiceEntry& entry) override;
  void onRemoved(ControlLink& link, ServiceEntry& entry) override;
  void onSynced(ControlLink& link) override;
  void onDown(ControlLink& link) override;

 private:
  void releaseAll(ControlLink& link);
  void wakeForParked(ControlLink& link, ServiceEntry& entry);
  void answerAllParked();
  void resumeReleased();
  static void onReleaseEvent(ngx_event_t* ev);

  static Worker* current_;
  std::vector<std::unique_ptr<ControlLink>> links_;  // by endpoint index; null when unused
  ParkedList releasing_;                             // released, in order, not resumed yet
  ngx_event_t releaseEvent_;                         // the next batch, posted to the next turn of the loop
};

}  // namespace ondemand::module
