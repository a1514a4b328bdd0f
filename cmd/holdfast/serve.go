package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"sync"

	"github.com/redis/go-redis/v9"

	"holdfast/relay"
)

// serve runs the relay until ctx is cancelled (SIGINT or SIGTERM).
func serve(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	check := fs.Bool("check-config", false, "load and validate the configuration (secret files included), print \"config ok\" and exit 0, or print the error and exit 2")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	o, err := loadConfig(*config)
	if *check {
		if err == nil {
			err = o.CheckFiles()
		}
		if err != nil {
			return &exitCodeError{code: exitUsage, err: err}
		}
		fmt.Fprintln(e.stdout, "config ok")
		return nil
	}
	if err != nil {
		return err
	}
	log := relay.NewLogger(o.Log, e.stderr)
	// go-redis has one process-wide logger; route it through ours. While
	// Redis is away it logs each failed dial: a line repeated word for
	// word is written once every 10 s.
	redis.SetLogger(redisLogger{relay.CollapseRepeats(log).With("component", "redis")})
	log.Info("holdfast starting", "version", version, "config", *config)
	o.Ops.Version = version
	// Under systemd (Type=notify), say when the relay's listeners serve
	// (while Redis does not answer, they refuse mail until it does) and
	// when it starts to stop.
	socket := e.getenv("NOTIFY_SOCKET")
	notify := func(state string) {
		if err := sdNotify(socket, state); err != nil {
			log.Warn("cannot notify the service manager", "err", err)
		}
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		select {
		case <-ctx.Done():
			notify("STOPPING=1")
		case <-done:
		}
	})
	err = relay.Run(ctx, o, log, e.reload, func() { notify("READY=1") })
	close(done)
	wg.Wait()
	return err
}

// redisLogger writes go-redis's internal messages (failed dials, pool
// errors) as warnings.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
