package main

import "testing"

func TestParseCPULine(t *testing.T) {
	tests := []struct {
		name        string
		line        string
		idle, total uint64
		ok          bool
	}{
		{"linux 6, guest fields left out", "cpu  100 2 30 400 5 6 7 8 50 0", 405, 558, true},
		{"the eight fields only", "cpu 1 1 1 1 1 1 1 1", 2, 8, true},
		{"a CPU's own line", "cpu0 100 2 30 400 5 6 7 8 0 0", 0, 0, false},
		{"too few fields", "cpu 1 2 3 4 5 6 7", 0, 0, false},
		{"not a number", "cpu 1 2 3 x 5 6 7 8", 0, 0, false},
		{"empty", "", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idle, total, ok := parseCPULine(tc.line)
			if idle != tc.idle || total != tc.total || ok != tc.ok {
				t.Errorf("parseCPULine(%q) = %d, %d, %v; want %d, %d, %v", tc.line, idle, total, ok, tc.idle, tc.total, tc.ok)
			}
		})
	}
}

func TestCPUUseSums(t *testing.T) {
	a := cpuSample{client: 10, clientOK: true, idle: 5, total: 100, machineOK: true}
	b := cpuSample{client: 30, clientOK: true, idle: 25, total: 300, machineOK: true}
	c := cpuSample{client: 35, clientOK: true, idle: 26, total: 310, machineOK: true}
	u := b.since(a)
	u.add(c.since(b))
	if u.client != 25 || u.idle != 21 || u.total != 210 || !u.clientOK || !u.macOK {
		t.Errorf("summed use = %+v", u)
	}
	u.add(cpuSample{}.since(c)) // a sample that read nothing
	if u.clientOK || u.macOK {
		t.Errorf("a missing sample left the sums marked known: %+v", u)
	}
}
