#include <catch2/catch.hpp>

#include "controld/core/activity_ledger.hpp"

using namespace ondemand::controld;

TEST_CASE("ledger: in flight is the sum of every connection's last report", "[ledger]") {
  ActivityLedger ledger;
  CHECK(ledger.inFlight("a") == 0);
  ledger.report(1, "a", 3);
  ledger.report(2, "a", 4);
  ledger.report(2, "b", 1);
  CHECK(ledger.inFlight("a") == 7);
  CHECK(ledger.inFlight("b") == 1);
  ledger.report(1, "a", 0);  // a report replaces the last one, it does not add
  CHECK(ledger.inFlight("a") == 4);
}

TEST_CASE("ledger: a dropped connection no longer counts and names what it lowered", "[ledger]") {
  ActivityLedger ledger;
  ledger.report(1, "a", 2);
  ledger.report(1, "b", 0);
  ledger.report(2, "a", 5);
  const auto dropped = ledger.dropConnection(1);
  CHECK(dropped.inFlightChanged == std::vector<std::string>{"a"});  // b was 0: its sum did not change
  CHECK(dropped.acknowledged.empty());
  CHECK(ledger.inFlight("a") == 5);
  CHECK(ledger.dropConnection(1).inFlightChanged.empty());  // twice is harmless
}

TEST_CASE("ledger: a drain waits for every announced worker's answer", "[ledger]") {
  ActivityLedger ledger;
  CHECK(ledger.drained("a"));  // never drained: nothing owed
  ledger.beginDrain("a", {1, 2});
  CHECK_FALSE(ledger.drained("a"));
  CHECK(ledger.awaiting("a") == 2);
  CHECK(ledger.acknowledge("a", 1));
  CHECK_FALSE(ledger.acknowledge("a", 1));  // answered already
  CHECK_FALSE(ledger.acknowledge("a", 3));  // never asked
  CHECK_FALSE(ledger.acknowledge("b", 2));  // another service
  CHECK_FALSE(ledger.drained("a"));
  CHECK(ledger.acknowledge("a", 2));
  CHECK(ledger.drained("a"));
}

TEST_CASE("ledger: a worker that goes away owes no answer", "[ledger]") {
  ActivityLedger ledger;
  ledger.beginDrain("a", {1, 2});
  ledger.beginDrain("b", {2});
  ledger.report(2, "a", 1);
  const auto dropped = ledger.dropConnection(2);
  CHECK(dropped.acknowledged == std::vector<std::string>{"a", "b"});
  CHECK(dropped.inFlightChanged == std::vector<std::string>{"a"});
  CHECK(ledger.drained("b"));
  CHECK_FALSE(ledger.drained("a"));
  CHECK(ledger.dropConnection(1).acknowledged == std::vector<std::string>{"a"});
  CHECK(ledger.drained("a"));
}

TEST_CASE("ledger: a new announcement replaces the last, a forgotten service owes nothing", "[ledger]") {
  ActivityLedger ledger;
  ledger.beginDrain("a", {1, 2});
  ledger.beginDrain("a", {3});
  CHECK(ledger.awaiting("a") == 1);
  CHECK_FALSE(ledger.acknowledge("a", 1));
  ledger.beginDrain("a", {});
  CHECK(ledger.drained("a"));
  ledger.beginDrain("a", {4});
  ledger.forgetDrain("a");
  CHECK(ledger.drained("a"));
  CHECK(ledger.dropConnection(4).acknowledged.empty());
}
