#include "core/signals.h"

#include <signal.h>

namespace mllm {

namespace {

volatile sig_atomic_t g_signal = 0;
struct sigaction g_old_term, g_old_int;

void on_signal(int sig) {
  if (g_signal != 0 && sig == SIGINT) {
    // The second Ctrl-C: die of SIGINT now (async-signal-safe: sigaction-free reset and raise).
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
    return;
  }
  if (g_signal == 0) g_signal = sig;
}

}  // namespace

StopSignals::StopSignals() {
  g_signal = 0;
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

bool StopSignals::requested() const {
  return g_signal != 0;
}

const char* StopSignals::name() const {
  if (g_signal == SIGTERM) return "SIGTERM";
  if (g_signal == SIGINT) return "SIGINT";
  return "";
}

}  // namespace mllm
