package main

import (
	"os"
	"testing"
	"time"
)

// incidentExecEnv, set to "1", makes the test binary run as holdfast
// itself, with its real main: the incident tests start relay processes
// this way (see startIncRelay).
const incidentExecEnv = "HOLDFAST_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(incidentExecEnv) == "1" {
		go exitWithParent()
		main() // exits
		return
	}
	os.Exit(m.Run())
}

// exitWithParent interrupts this process, as Ctrl-C would, when the test
// binary that started it goes away (the process is then re-parented), and
// exits 10 s later if it is still running: a crashed or timed-out test
// leaves no relay behind.
func exitWithParent() {
	parent := os.Getppid()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		if os.Getppid() == parent {
			continue
		}
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			_ = p.Signal(os.Interrupt)
		}
		time.Sleep(10 * time.Second)
		os.Exit(exitError)
	}
}
