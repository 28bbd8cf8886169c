/* What the load tools (abload.c, holdload.c) share. */
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A load tool that cannot do its job stops at once, saying why. */
static inline void die(const char* what) {
  perror(what);
  exit(2);
}
