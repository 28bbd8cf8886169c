#include <exception>
#include <iostream>

#include "controld/daemon/daemon.hpp"

int main(int argc, char** argv) {
  try {
    return ondemand::controld::cliMain(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "controld: " << e.what() << "\n";
    return 1;
  }
}
