// Command gocheck verifies modelcourt's signed checkpoints and Merkle proofs with Go's
// golang.org/x/mod/sumdb/note and sumdb/tlog, an implementation independent of ours.
//
// It reads a JSON document on stdin:
//
//	{"vkey": "name+hash+key", "notes": ["<signed checkpoint>", ...],
//	 "inclusion": [{"index": 4, "size": 10, "leaf_b64": "<leaf hash>", "hashes_b64": [...]}],
//	 "consistency": [{"first": 10, "second": 11, "hashes_b64": [...]}]}
//
// Proofs are checked against the root hashes of the checkpoints of those sizes. It prints one
// line per check ("ok ..." or "FAIL ...") and exits 1 if any check failed, 2 on unusable input.
//
// Build it offline against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o gocheck .
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index  int64    `json:"index"`
	Size   int64    `json:"size"`
	Leaf   string   `json:"leaf_b64"`
	Hashes []string `json:"hashes_b64"`
}

type consistency struct {
	First  int64    `json:"first"`
	Second int64    `json:"second"`
	Hashes []string `json:"hashes_b64"`
}

type document struct {
	VKey        string        `json:"vkey"`
	Notes       []string      `json:"notes"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

func main() {
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	var doc document
	if err := decoder.Decode(&doc); err != nil {
		fmt.Fprintln(os.Stderr, "gocheck: bad input:", err)
		os.Exit(2)
	}
	verifier, err := note.NewVerifier(doc.VKey)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gocheck: bad verifier key:", err)
		os.Exit(2)
	}

	failed := false
	report := func(err error, format string, args ...any) {
		if err != nil {
			failed = true
			fmt.Printf("FAIL "+format+": %v\n", append(args, err)...)
		} else {
			fmt.Printf("ok "+format+"\n", args...)
		}
	}

	roots := map[int64]tlog.Hash{}
	for i, msg := range doc.Notes {
		origin, size, root, err := openCheckpoint(msg, verifier)
		if err == nil {
			if old, seen := roots[size]; seen && old != root {
				err = fmt.Errorf("two checkpoints of size %d with different roots", size)
			}
			roots[size] = root
		}
		report(err, "note %d origin=%s size=%d", i, origin, size)
	}
	for _, p := range doc.Inclusion {
		report(checkInclusion(p, roots), "inclusion index=%d size=%d", p.Index, p.Size)
	}
	for _, p := range doc.Consistency {
		report(checkConsistency(p, roots), "consistency first=%d second=%d", p.First, p.Second)
	}
	if failed {
		os.Exit(1)
	}
}

// openCheckpoint verifies a signed note and parses its c2sp.org/tlog-checkpoint body.
func openCheckpoint(msg string, verifier note.Verifier) (string, int64, tlog.Hash, error) {
	n, err := note.Open([]byte(msg), note.VerifierList(verifier))
	if err != nil {
		return "", 0, tlog.Hash{}, err
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) < 3 {
		return "", 0, tlog.Hash{}, fmt.Errorf("checkpoint has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return lines[0], 0, tlog.Hash{}, fmt.Errorf("bad size %q", lines[1])
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return lines[0], size, tlog.Hash{}, err
	}
	return lines[0], size, root, nil
}

func checkInclusion(p inclusion, roots map[int64]tlog.Hash) error {
	root, ok := roots[p.Size]
	if !ok {
		return fmt.Errorf("no checkpoint of size %d", p.Size)
	}
	leaf, err := tlog.ParseHash(p.Leaf)
	if err != nil {
		return err
	}
	proof, err := parseHashes(p.Hashes)
	if err != nil {
		return err
	}
	return tlog.CheckRecord(tlog.RecordProof(proof), p.Size, root, p.Index, leaf)
}

func checkConsistency(p consistency, roots map[int64]tlog.Hash) error {
	first, ok1 := roots[p.First]
	second, ok2 := roots[p.Second]
	if !ok1 || !ok2 {
		return fmt.Errorf("no checkpoint of size %d or %d", p.First, p.Second)
	}
	proof, err := parseHashes(p.Hashes)
	if err != nil {
		return err
	}
	return tlog.CheckTree(tlog.TreeProof(proof), p.Second, second, p.First, first)
}

func parseHashes(encoded []string) ([]tlog.Hash, error) {
	hashes := make([]tlog.Hash, len(encoded))
	for i, s := range encoded {
		h, err := tlog.ParseHash(s)
		if err != nil {
			return nil, fmt.Errorf("proof hash %d: %v", i, err)
		}
		hashes[i] = h
	}
	return hashes, nil
}
