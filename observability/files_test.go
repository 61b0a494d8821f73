package observability_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// The files under test, relative to this package's directory.
const (
	dashboardFile  = "grafana/dashboards/tapproxy.json"
	rulesFile      = "prometheus/rules.yml"
	rulesTestFile  = "prometheus/rules_test.yml"
	promConfigFile = "prometheus/prometheus.yml"
	datasourceFile = "grafana/provisioning/datasources/tapproxy.yml"
	providerFile   = "grafana/provisioning/dashboards/tapproxy.yml"
)

// dashboard is the part of Grafana's dashboard model the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID          int             `json:"id"`
	Type        string          `json:"type"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	Datasource  *datasourceRef  `json:"datasource"`
	GridPos     gridPos         `json:"gridPos"`
	Targets     []target        `json:"targets"`
	Panels      []panel         `json:"panels"` // of a collapsed row
	FieldConfig json.RawMessage `json:"fieldConfig"`
}

type gridPos struct{ H, W, X, Y int }

type target struct {
	RefID      string         `json:"refId"`
	Expr       string         `json:"expr"`
	Datasource *datasourceRef `json:"datasource"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Query    any    `json:"query"` // a string, or an object with "query"
	AllValue string `json:"allValue"`
	Current  struct {
		Value any `json:"value"`
	} `json:"current"`
}

// queryString is the variable's query, whichever shape it has.
func (v variable) queryString() string {
	switch q := v.Query.(type) {
	case string:
		return q
	case map[string]any:
		s, _ := q["query"].(string)
		return s
	}
	return ""
}

func loadDashboard(tb testing.TB) dashboard {
	tb.Helper()
	b, err := os.ReadFile(dashboardFile)
	require.NoError(tb, err)
	var d dashboard
	require.NoError(tb, json.Unmarshal(b, &d))
	return d
}

// allPanels lists the dashboard's panels, rows and the panels of collapsed
// rows included.
func (d dashboard) allPanels() []panel {
	var ps []panel
	for _, p := range d.Panels {
		ps = append(ps, p)
		ps = append(ps, p.Panels...)
	}
	return ps
}

// query is one PromQL expression from the dashboard or the rules, with where
// it came from.
type query struct {
	where string // such as `panel "Request rate" A` or `rule job:...`
	expr  string
	// panelTitle and refID identify a panel target; both are empty for the
	// rules and the variables.
	panelTitle, refID string
}

// panelQueries are the expressions of every panel target.
func (d dashboard) panelQueries() []query {
	var qs []query
	for _, p := range d.allPanels() {
		for _, t := range p.Targets {
			qs = append(qs, query{where: "panel " + strconvQuote(p.Title) + " " + t.RefID, expr: t.Expr, panelTitle: p.Title, refID: t.RefID})
		}
	}
	return qs
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }

// labelValuesCall matches Grafana's label_values(selector, label) and
// label_values(label) variable queries.
var labelValuesCall = regexp.MustCompile(`^label_values\((?:(.*),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// variableQuery is a query variable's selector and the label whose values
// it lists.
type variableQuery struct {
	name, selector, label string
}

func (d dashboard) variableQueries(tb testing.TB) []variableQuery {
	tb.Helper()
	var vqs []variableQuery
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesCall.FindStringSubmatch(v.queryString())
		require.NotNil(tb, m, "variable %s: want a label_values query, got %q", v.Name, v.queryString())
		vqs = append(vqs, variableQuery{name: v.Name, selector: m[1], label: m[2]})
	}
	return vqs
}

// substitute replaces the dashboard's variables in expr: the query
// variables by value (".*" for the drift test) and $__rate_interval by
// rateInterval. Custom variables get their current value unless all is
// set, when they too become ".*".
func (d dashboard) substitute(expr, value, rateInterval string, all bool) string {
	repl := map[string]string{"__rate_interval": rateInterval}
	for _, v := range d.Templating.List {
		switch {
		case v.Type == "custom" && !all:
			s, _ := v.Current.Value.(string)
			repl[v.Name] = s
		default:
			repl[v.Name] = value
		}
	}
	names := make([]string, 0, len(repl))
	for n := range repl {
		names = append(names, n)
	}
	// Longest first, so that $job never eats the start of $jobs.
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	for _, n := range names {
		expr = strings.ReplaceAll(expr, "${"+n+"}", repl[n])
		expr = strings.ReplaceAll(expr, "$"+n, repl[n])
	}
	return expr
}

// leftoverVariable finds a Grafana variable reference that substitute did
// not replace; ${1} in label_replace is no variable.
var leftoverVariable = regexp.MustCompile(`\$\{?[A-Za-z_]|\[\[`)

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(tb testing.TB) ruleFile {
	tb.Helper()
	b, err := os.ReadFile(rulesFile)
	require.NoError(tb, err)
	var rf ruleFile
	require.NoError(tb, yaml.Unmarshal(b, &rf))
	require.NotEmpty(tb, rf.Groups)
	return rf
}

// ruleQueries are the expressions of every rule.
func (rf ruleFile) ruleQueries() []query {
	var qs []query
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			qs = append(qs, query{where: "rule " + r.Record + r.Alert, expr: r.Expr})
		}
	}
	return qs
}

// lookTool finds a Prometheus command such as promtool. Under CI, which
// installs the Debian package prometheus, a missing one fails the test;
// elsewhere it skips it.
func lookTool(tb testing.TB, name string) string {
	tb.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%s not found; CI installs the Debian package prometheus", name)
		}
		tb.Skipf("%s not found; install the Debian package prometheus", name)
	}
	return bin
}

// repoRoot is the directory of the repository, above this module.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.Abs("..")
	require.NoError(tb, err)
	return dir
}

func readFile(tb testing.TB, name string) string {
	tb.Helper()
	b, err := os.ReadFile(name)
	require.NoError(tb, err)
	return string(b)
}

// promqlBlock is a ```promql code block of the README.
var promqlBlock = regexp.MustCompile("(?s)```promql\n(.*?)\n```")

// readmeQueries are the PromQL queries the README shows.
func readmeQueries(tb testing.TB) []query {
	tb.Helper()
	var qs []query
	for i, m := range promqlBlock.FindAllStringSubmatch(readFile(tb, filepath.Join(repoRoot(tb), "README.md")), -1) {
		qs = append(qs, query{where: "README query " + string(rune('1'+i)), expr: m[1]})
	}
	require.GreaterOrEqual(tb, len(qs), 2, "the README shows the two queries people use most")
	return qs
}
