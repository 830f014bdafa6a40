/**
 * Work in progress that `close()` must see finish, or end itself at the deadline. The list links
 * through the work itself: with a `Set`, added and deleted once per request, every finished
 * request stayed reachable to V8's young-generation GC and was promoted, which multiplied GC time.
 */
export abstract class InFlight {
  /** Managed by {@link InFlightList}. */
  previousInFlight: InFlight | undefined = undefined;
  /** Managed by {@link InFlightList}. */
  nextInFlight: InFlight | undefined = undefined;
  /** Managed by {@link InFlightList}. */
  inFlight = false;

  /** Ends the work now: 503 when nothing was answered yet, else the connection is cut or closed. */
  abstract shutdown(): void;

  /** What {@link stalledFor} last saw (-1: nothing yet), and when. */
  private progressSeen = -1;
  private progressSeenAt = 0;

  /** Starts {@link stalledFor} over: the count it follows is a new one (a new try's socket). */
  protected restartProgress(): void {
    this.progressSeen = -1;
  }

  /** Called by the proxy's sweep while the work is in flight, for work with a deadline. */
  checkDeadline?(now: number): void;

  /**
   * For the sweep: how long `progress`, a count that grows with activity, has not moved (0 when it
   * just did). Measured from the visit that saw it move, so a deadline on it is never met early.
   */
  protected stalledFor(progress: number, now: number): number {
    if (progress !== this.progressSeen) {
      this.progressSeen = progress;
      this.progressSeenAt = now;
      return 0;
    }
    return now - this.progressSeenAt;
  }
}

/** An intrusive doubly-linked list of {@link InFlight} work: O(1) add and delete, nothing allocated. */
export class InFlightList {
  private head: InFlight | undefined;
  /** Where {@link visitSome} goes on from. */
  private cursor: InFlight | undefined;
  size = 0;

  add(work: InFlight): void {
    if (work.inFlight) return;
    work.inFlight = true;
    work.previousInFlight = undefined;
    work.nextInFlight = this.head;
    if (this.head) this.head.previousInFlight = work;
    this.head = work;
    this.size++;
  }

  /** False when the work was not in the list. */
  delete(work: InFlight): boolean {
    if (!work.inFlight) return false;
    const { previousInFlight: previous, nextInFlight: next } = work;
    if (this.cursor === work) this.cursor = next;
    if (previous) previous.nextInFlight = next;
    else this.head = next;
    if (next) next.previousInFlight = previous;
    work.previousInFlight = undefined;
    work.nextInFlight = undefined;
    work.inFlight = false;
    this.size--;
    return true;
  }

  /** Visits every entry; `visit` may remove the entry it is given. */
  forEach(visit: (work: InFlight) => void): void {
    for (let work = this.head; work; ) {
      const next: InFlight | undefined = work.nextInFlight;
      visit(work);
      work = next;
    }
  }

  /**
   * Visits the next `count` entries, going on from where the last call stopped and round again, so
   * that calls in turn visit every entry once per `size` visits; `visit` may remove its entry.
   */
  visitSome(count: number, visit: (work: InFlight) => void): void {
    for (let left = Math.min(count, this.size); left > 0; left--) {
      const work = this.cursor ?? this.head;
      if (!work) return;
      this.cursor = work.nextInFlight;
      visit(work);
    }
  }

  /** A copy, safe to iterate while the work leaves the list. */
  toArray(): InFlight[] {
    const all: InFlight[] = [];
    for (let work = this.head; work; work = work.nextInFlight) all.push(work);
    return all;
  }
}
