package tapproxy

// RaceEnabled lets external tests skip allocation counts under -race.
const RaceEnabled = raceEnabled
