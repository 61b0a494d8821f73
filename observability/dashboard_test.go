package observability_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// update rewrites the dashboard in canonical form, say after exporting it
// from Grafana: go test ./observability -run TestDashboardIsCanonical -update
var update = flag.Bool("update", false, "rewrite "+dashboardFile+" in canonical form")

// canonicalJSON is what encoding/json makes of b: keys sorted, two-space
// indent, no HTML escaping (PromQL has its > and &).
func canonicalJSON(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var v any
	require.NoError(tb, json.Unmarshal(b, &v))
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	require.NoError(tb, enc.Encode(v))
	return out.Bytes()
}

func TestDashboardIsCanonical(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	// Without <, > and &, json.Marshal's HTML escaping changes nothing
	// either, so the file is canonical whichever way it is encoded.
	require.NotContains(t, string(b), "<")
	require.NotContains(t, string(b), ">")
	require.NotContains(t, string(b), "&")
	canon := canonicalJSON(t, b)
	if *update {
		require.NoError(t, os.WriteFile(dashboardFile, canon, 0o644))
		return
	}
	require.Equal(t, string(canon), string(b),
		"%s is not canonical; rewrite it with: go test ./observability -run TestDashboardIsCanonical -update", dashboardFile)
}

func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)

	t.Run("model", func(t *testing.T) {
		assert.Equal(t, "tapproxy-overview", d.UID, "the uid is stable: links and provisioning use it")
		assert.GreaterOrEqual(t, d.SchemaVersion, 39)
		assert.NotEmpty(t, d.Title)
	})

	t.Run("variables", func(t *testing.T) {
		vars := map[string]variable{}
		for _, v := range d.Templating.List {
			vars[v.Name] = v
		}
		require.Contains(t, vars, "datasource")
		assert.Equal(t, "datasource", vars["datasource"].Type)
		assert.Equal(t, "prometheus", vars["datasource"].queryString())
		for _, name := range []string{"job", "instance", "route", "upstream"} {
			require.Contains(t, vars, name)
			assert.Equal(t, "query", vars[name].Type, name)
			assert.Equal(t, ".*", vars[name].AllValue, "%s: All must match series without the label too", name)
		}
		assert.Contains(t, d.variableQueries(t), variableQuery{"route", `http_server_request_duration_seconds_count{job=~"$job", instance=~"$instance"}`, "http_route"})
	})

	t.Run("unique panel ids", func(t *testing.T) {
		seen := map[int]string{}
		for _, p := range d.allPanels() {
			assert.NotZero(t, p.ID, "panel %q", p.Title)
			if prev, dup := seen[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			seen[p.ID] = p.Title
		}
	})

	t.Run("panels", func(t *testing.T) {
		for _, p := range d.allPanels() {
			if p.Type == "row" {
				continue
			}
			t.Run(p.Title, func(t *testing.T) {
				assert.NotEmpty(t, p.Description, "a description")
				var fc struct {
					Defaults struct {
						Unit string `json:"unit"`
					} `json:"defaults"`
				}
				require.NoError(t, json.Unmarshal(p.FieldConfig, &fc))
				assert.NotEmpty(t, fc.Defaults.Unit, "a unit")
				require.NotNil(t, p.Datasource)
				assert.Equal(t, datasourceRef{"prometheus", "${datasource}"}, *p.Datasource)
				require.NotEmpty(t, p.Targets, "a target")
				refs := map[string]bool{}
				for _, tg := range p.Targets {
					assert.NotEmpty(t, tg.RefID, "a refId")
					assert.False(t, refs[tg.RefID], "refId %s repeats", tg.RefID)
					refs[tg.RefID] = true
					require.NotNil(t, tg.Datasource, "target %s: a datasource", tg.RefID)
					assert.Equal(t, datasourceRef{"prometheus", "${datasource}"}, *tg.Datasource, "target %s", tg.RefID)
					assert.Contains(t, tg.Expr, "$__rate_interval", "target %s", tg.RefID)
				}
			})
		}
	})

	t.Run("grid", func(t *testing.T) {
		type cell struct{ x, y int }
		taken := map[cell]string{}
		for _, p := range d.allPanels() {
			g := p.GridPos
			if g.X < 0 || g.W <= 0 || g.H <= 0 || g.Y < 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: gridPos %+v does not fit the 24-column grid", p.Title, g)
				continue
			}
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := taken[cell{x, y}]; ok {
						t.Errorf("panels %q and %q overlap at x=%d y=%d", other, p.Title, x, y)
						continue
					}
					taken[cell{x, y}] = p.Title
				}
			}
		}
	})

	t.Run("rows in order", func(t *testing.T) {
		var rows []string
		for _, p := range d.Panels {
			if p.Type == "row" {
				rows = append(rows, p.Title)
			}
		}
		want := []string{"Traffic", "Errors", "Latency", "Payload", "Upstreams", "The proxy itself", "Business metric: orders"}
		assert.Equal(t, want, rows)
		// A row's panels follow it: the panels sort by position.
		sorted := slices.IsSortedFunc(d.Panels, func(a, b panel) int {
			if a.GridPos.Y != b.GridPos.Y {
				return a.GridPos.Y - b.GridPos.Y
			}
			return a.GridPos.X - b.GridPos.X
		})
		assert.True(t, sorted, "panels are listed in the order of their positions")
	})
}

func TestDashboardProvisioning(t *testing.T) {
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Type, URL string
			UID       string `yaml:"uid"`
			IsDefault bool   `yaml:"isDefault"`
		} `yaml:"datasources"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(readFile(t, datasourceFile)), &ds))
	assert.Equal(t, 1, ds.APIVersion)
	require.Len(t, ds.Datasources, 1)
	assert.Equal(t, "prometheus", ds.Datasources[0].Type)
	assert.True(t, ds.Datasources[0].IsDefault, "the dashboard's datasource variable picks the default")
	// The Prometheus of prometheus.yml's instructions.
	assert.Equal(t, "http://localhost:9091", ds.Datasources[0].URL)
	assert.Contains(t, readFile(t, promConfigFile), "--web.listen-address=localhost:9091")

	var prov struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(readFile(t, providerFile)), &prov))
	assert.Equal(t, 1, prov.APIVersion)
	require.Len(t, prov.Providers, 1)
	assert.Equal(t, "file", prov.Providers[0].Type)
	assert.Equal(t, "${TAPPROXY_DASHBOARDS}", prov.Providers[0].Options.Path,
		"the provider loads the directory TAPPROXY_DASHBOARDS names, as the README says")
	assert.Contains(t, readFile(t, filepath.Join(repoRoot(t), "README.md")), "TAPPROXY_DASHBOARDS=")
}
