// Package dirsender is the development upstream: it "delivers" each message
// by writing it to a folder, so that a new user of "make run" sees mail go
// in and come out without any Microsoft account. It owns nothing else and
// is not meant for production.
package dirsender

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"holdfast/queue"
)

// Sender writes each message to Dir as ID.eml, with its envelope beside it
// as ID.json. Files appear whole: each is written to a temporary name and
// renamed. Sending the same message again overwrites its files.
type Sender struct {
	Dir string
}

// New returns a Sender writing to dir, creating it if needed.
func New(dir string) (*Sender, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("dir sender: %w", err)
	}
	return &Sender{Dir: dir}, nil
}

type envelope struct {
	ID    string   `json:"id"`
	Route string   `json:"route"`
	App   string   `json:"app"`
	From  string   `json:"from"`
	To    []string `json:"to"`
}

// Send writes the message and returns a reply naming the file.
func (s *Sender) Send(ctx context.Context, m *queue.Message) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	env, err := json.MarshalIndent(envelope{ID: m.ID, Route: m.Route, App: m.App, From: m.From, To: m.To}, "", "  ")
	if err != nil {
		return "", err
	}
	if err := s.write(m.ID+".json", append(env, '\n')); err != nil {
		return "", err
	}
	path := filepath.Join(s.Dir, m.ID+".eml")
	if err := s.write(m.ID+".eml", m.Body); err != nil {
		return "", err
	}
	return "250 2.0.0 written to " + path, nil
}

func (s *Sender) write(name string, data []byte) error {
	tmp, err := os.CreateTemp(s.Dir, ".tmp-"+name+"-*")
	if err != nil {
		return fmt.Errorf("dir sender: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("dir sender: write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("dir sender: write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, name)); err != nil {
		return fmt.Errorf("dir sender: %w", err)
	}
	return nil
}
