// Command o365sim runs the Exchange Online and Entra ID simulator of
// package sim on loopback, for local runs and demos:
//
//	o365sim --config cmd/o365sim/sim.example.yaml --ca-out /tmp/o365sim-ca.pem
//
// It prints its endpoints, writes its CA certificate to --ca-out so that
// clients can trust it, and runs until SIGINT or SIGTERM. The admin API is
// described in the package documentation of sim.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"holdfast/cmd/o365sim/sim"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "o365sim:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("o365sim", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML seed of tenants, apps and mailboxes (see sim.example.yaml)")
	httpsAddr := fs.String("https", "", "listen address of the token and Graph endpoint (overrides listen.https; default 127.0.0.1:0)")
	smtpAddr := fs.String("smtp", "", "listen address of SMTP submission (overrides listen.smtp; default 127.0.0.1:0)")
	adminAddr := fs.String("admin", "", "listen address of the admin API (overrides listen.admin; default 127.0.0.1:0)")
	caOut := fs.String("ca-out", "", "write the simulator's CA certificate (PEM) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("--config is required")
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	override(&cfg.HTTPSAddr, *httpsAddr)
	override(&cfg.SMTPAddr, *smtpAddr)
	override(&cfg.AdminAddr, *adminAddr)

	s, err := sim.New(cfg)
	if err != nil {
		return err
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, s.CACertPEM(), 0o644); err != nil {
			return fmt.Errorf("write CA certificate: %w", err)
		}
	}
	if err := s.Start(); err != nil {
		return err
	}
	defer s.Close()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	log.Info("o365sim running",
		"token_url", s.AuthorityURL()+"/{tenant}/oauth2/v2.0/token",
		"graph_url", s.GraphURL()+"/v1.0",
		"smtp", s.SMTPAddr(),
		"admin_url", s.AdminURL()+"/admin",
		"ca", *caOut)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	log.Info("shutting down")
	return s.Close()
}

// override sets *field to v unless v is empty.
func override(field *string, v string) {
	if v != "" {
		*field = v
	}
}
